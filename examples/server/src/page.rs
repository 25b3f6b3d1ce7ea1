//! `GET /`: a page for a person who just wants to try a model (`page.html`, compiled in: no build step, no CDN),
//! and the routes it needs beside the API's: `GET /models`, `GET /jobs/{id}/preview` and `DELETE /jobs/{id}`.
//! The page itself needs no token; every call it makes sends the one typed into it, the WebSocket's as the
//! subprotocol `bearer.<token>` (a browser cannot set headers on a WebSocket).

use crate::auth::Scope;
use crate::error::ApiError;
use crate::routes::{App, engine_call, forget, owned_job};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{Value, json};
use std::sync::Arc;

pub async fn index() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

/// The models this engine serves: name, whether it is the default, its defaults and what it conditions on.
pub async fn models(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!(app.engine.models().summaries()))
}

/// The latest latent preview of a job as a PNG: its middle frame.
pub async fn preview(
    State(app): State<Arc<App>>,
    Extension(scope): Extension<Scope>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (job, _) = owned_job(&app, &id, &scope).await?;
    let latest = engine_call(&app, move |e| e.latest_preview(job)).await?.map_err(|e| ApiError::from_engine(&e))?;
    let Some((_, frames)) = latest else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("{id} has no preview yet")));
    };
    if frames.num_frames == 0 {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("{id} has no preview yet")));
    }
    let mut png = Vec::new();
    let mut e = png::Encoder::new(&mut png, frames.width as u32, frames.height as u32);
    e.set_color(png::ColorType::Rgb);
    e.write_header()
        .and_then(|mut w| w.write_image_data(frames.frame(frames.num_frames / 2)))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut response = png.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
    Ok(response)
}

/// Cancels the job if it still runs, forgets it and deletes its video.
pub async fn delete(
    State(app): State<Arc<App>>,
    Extension(scope): Extension<Scope>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (job, request) = owned_job(&app, &id, &scope).await?;
    forget(&app, job, &request).await?;
    Ok(Json(json!({"job_id": id, "deleted": true})))
}
