//! Error bodies in each front door's own envelope. Handlers, authentication, body limits and unknown routes all
//! answer the server's native `{"error": {"code", "message", "field"}}`; this middleware, the outermost layer,
//! rewrites it under `/v1` into OpenAI's envelope and under `/v1beta1` into Google's, so each SDK raises its own
//! exception with the field it names. Status codes and headers (`Retry-After`, `WWW-Authenticate`) stay.

use axum::body::Body;
use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use serde_json::Value;

pub async fn rewrite(request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let door = if path.starts_with("/v1/") {
        Door::OpenAi
    } else if path.starts_with("/v1beta1/") {
        Door::Vertex
    } else {
        return next.run(request).await;
    };
    let response = next.run(request).await;
    if response.status().is_success() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let native: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let body = match door {
        Door::OpenAi => crate::openai::envelope(parts.status, &native),
        Door::Vertex => {
            let message = native["error"]["message"].as_str().unwrap_or("error").to_string();
            crate::vertex::envelope(parts.status, &message)
        }
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    Response::from_parts(parts, Body::from(body.to_string()))
}

enum Door {
    OpenAi,
    Vertex,
}
