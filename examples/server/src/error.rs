//! Errors as HTTP responses: one JSON shape, `{"error": {"code", "message", "field"?}}`, and one mapping from the
//! engine's error codes to HTTP status codes.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use vgen_core::error::{Error, ErrorCode};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// The engine's code name where there is one (`invalid_argument`), else the server's own (`unauthorized`).
    pub code: &'static str,
    pub message: String,
    /// The request field the error is about, where known.
    pub field: Option<String>,
    /// Seconds, for `Retry-After`.
    pub retry_after: Option<u64>,
    /// Extra headers (`WWW-Authenticate`).
    pub www_authenticate: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), field: None, retry_after: None, www_authenticate: None }
    }

    /// A 400 about one field of the request; the message starts with the field's name.
    pub fn invalid(field: &str, message: impl std::fmt::Display) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, "invalid_argument", format!("{field}: {message}"));
        e.field = Some(field.to_string());
        e
    }

    pub fn not_found(id: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("no job {id}"))
    }

    pub fn unauthorized(token_given: bool) -> Self {
        let (message, challenge) = if token_given {
            ("the bearer token is not valid", r#"Bearer realm="vgen", error="invalid_token""#)
        } else {
            ("this route needs Authorization: Bearer <token>", r#"Bearer realm="vgen""#)
        };
        let mut e = Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
        e.www_authenticate = Some(challenge);
        e
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// An engine error from any call. Submit maps a few codes differently; see [`ApiError::from_submit`].
    pub fn from_engine(e: &Error) -> Self {
        let status = match e.code() {
            ErrorCode::InvalidArgument | ErrorCode::Unsupported => StatusCode::BAD_REQUEST,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::AlreadyExists | ErrorCode::NotReady | ErrorCode::Cancelled => StatusCode::CONFLICT,
            ErrorCode::QueueFull => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable | ErrorCode::ShuttingDown | ErrorCode::ResourceExhausted => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorCode::Timeout | ErrorCode::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut out = Self::new(status, e.code().name(), e.message());
        // Retry-After is whole seconds; round up so a client never comes back too early.
        out.retry_after = e.retry_after_ms().map(|ms| ms.div_ceil(1000).max(1));
        if status == StatusCode::TOO_MANY_REQUESTS && out.retry_after.is_none() {
            out.retry_after = Some(1);
        }
        out
    }

    /// An engine error from `submit`: an unknown model is the request's fault (400, field `model`), and an
    /// invalid argument names the request field it is about.
    pub fn from_submit(e: &Error) -> Self {
        match e.code() {
            ErrorCode::NotFound => Self::invalid("model", e.message()),
            ErrorCode::InvalidArgument => {
                let field = field_of(e.message());
                let mut out = Self::from_engine(e);
                if let Some(field) = field {
                    if !e.message().starts_with(field) {
                        out.message = format!("{field}: {}", e.message());
                    }
                    out.field = Some(field.to_string());
                }
                out
            }
            _ => Self::from_engine(e),
        }
    }
}

/// The field of a `POST /generate` body an engine validation message is about. The engine's messages start
/// with the engine's field name; width, height and num_frames come from this server's resolution and duration.
fn field_of(message: &str) -> Option<&'static str> {
    let first: String = message.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
    Some(match first.as_str() {
        "width" | "height" => "resolution",
        "num_frames" => "duration",
        "prompt" => "prompt",
        "negative_prompt" => "negative_prompt",
        "steps" => "steps",
        "fps" => "fps",
        "guidance_scale" => "guidance_scale",
        "priority" => "priority",
        "seed" => "seed",
        "sampler" => "sampler",
        "step_cache" => "step_cache",
        "idempotency_key" => "Idempotency-Key",
        _ if message.starts_with("this request needs about") => "resolution",
        _ => return None,
    })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = serde_json::json!({"code": self.code, "message": self.message});
        if let Some(field) = &self.field {
            error["field"] = field.clone().into();
        }
        if let Some(s) = self.retry_after {
            error["retry_after_seconds"] = s.into();
        }
        let mut response = (self.status, axum::Json(serde_json::json!({ "error": error }))).into_response();
        let headers = response.headers_mut();
        if let Some(s) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if let Some(challenge) = self.www_authenticate {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_codes_map_to_http_statuses_with_retry_after_in_whole_seconds() {
        let e = ApiError::from_engine(&Error::new(ErrorCode::QueueFull, "full").with_retry_after(1500));
        assert_eq!((e.status, e.retry_after), (StatusCode::TOO_MANY_REQUESTS, Some(2)));
        let e = ApiError::from_engine(&Error::new(ErrorCode::ShuttingDown, "bye"));
        assert_eq!((e.status, e.retry_after), (StatusCode::SERVICE_UNAVAILABLE, None));
        let e = ApiError::from_submit(&Error::invalid("width 100 is not a positive multiple of 16: use 96 or 112"));
        assert_eq!(e.field.as_deref(), Some("resolution"));
        assert!(e.message.starts_with("resolution: width 100"), "{}", e.message);
        let e = ApiError::from_submit(&Error::new(ErrorCode::NotFound, "unknown model \"x\""));
        assert_eq!((e.status, e.field.as_deref()), (StatusCode::BAD_REQUEST, Some("model")));
    }
}
