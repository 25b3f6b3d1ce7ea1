//! The OpenAI Videos API under `/v1`, as the official `openai` SDK sends and parses it (`client.videos.create`,
//! `create_and_poll`, `retrieve`, `list`, `delete`, `download_content`, `remix`), so code written against Sora
//! needs only a new `base_url`. It is a front door onto the same engine, tokens, scopes and limits as
//! `POST /generate`; only the wire format differs:
//! - a `video` object (`id`, `object`, `status` queued / in_progress / completed / failed, `progress` 0–100,
//!   `created_at`, `completed_at`, `expires_at`, `model`, `seconds`, `size`, `prompt`, `remixed_from_video_id`,
//!   `error`) read back from the engine's job and its request's metadata;
//! - `seconds` and `size` snapped to what the model can make (the answer says which), or a 400 naming the field;
//! - errors in OpenAI's envelope, `{"error": {"message", "type", "param", "code"}}`, with statuses the SDK maps
//!   to its exceptions; 409, 429 and 5xx (which it retries) only where a retry may succeed;
//! - `openai-poll-after-ms` on a running video, from the engine's ETA, which `create_and_poll` sleeps by.
//!
//! Each video's files are an MP4 and an animated PNG beside it (lossless frames, for the thumbnail and the
//! spritesheet). `GET /v1/videos` lists the videos this process created, newest first by default.

use crate::auth::Scope;
use crate::error::ApiError;
use crate::generate::{self, GenerateBody, OWNER};
use crate::routes::{App, engine_call, forget, owned_job};
use crate::status::state_name;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use vgen_core::engine::image::ImageInput;
use vgen_core::engine::{JobId, JobState, JobStatus, Request};

/// Metadata entries of a video made through this door.
const SECONDS: &str = "openai_seconds";
const SIZE: &str = "openai_size";
const REMIXED_FROM: &str = "openai_remixed_from";

pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/videos", post(create).get(list))
        .route("/v1/videos/{id}", get(retrieve).delete(delete))
        .route("/v1/videos/{id}/content", get(content))
        .route("/v1/videos/{id}/remix", post(remix))
}

/// OpenAI's error envelope for a native error body (`{"error": {"code", "message", "field"}}`), with the error
/// `type` the SDK reads.
pub fn envelope(status: StatusCode, native: &Value) -> Value {
    let e = &native["error"];
    let kind = match status {
        StatusCode::UNAUTHORIZED => "authentication_error",
        StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
        s if s.is_server_error() => "server_error",
        _ => "invalid_request_error",
    };
    json!({"error": {
        "message": e["message"].as_str().unwrap_or(status.canonical_reason().unwrap_or("error")),
        "type": kind,
        "param": e["field"],
        "code": e["code"],
    }})
}

/// The fields of a create request, from a multipart form (what the SDK always sends) or JSON.
#[derive(Default)]
struct Create {
    prompt: Option<String>,
    model: Option<String>,
    seconds: Option<String>,
    size: Option<String>,
    image: Option<ImageInput>,
}

async fn create(
    State(app): State<Arc<App>>,
    Extension(scope): Extension<Scope>,
    headers: HeaderMap,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let multipart = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.to_ascii_lowercase().starts_with("multipart/form-data"));
    let fields = if multipart {
        let form = Multipart::from_request(request, &()).await.map_err(|e| ApiError::invalid("body", e.body_text()))?;
        read_form(form).await?
    } else {
        let bytes = Bytes::from_request(request, &()).await.map_err(|e| ApiError::invalid("body", e.body_text()))?;
        read_json(&bytes)?
    };
    let prompt = fields.prompt.ok_or_else(|| ApiError::invalid("prompt", "is required"))?;
    let model =
        app.engine.models().get(fields.model.as_deref()).map_err(|e| ApiError::invalid("model", e.message()))?;
    let info = model.info();
    let (width, height) = match &fields.size {
        Some(s) => snap_size(s, info.size_multiple.max(1))?,
        None => (info.defaults.width, info.defaults.height),
    };
    let body = GenerateBody {
        segments: Vec::new(),
        prompt,
        duration: fields.seconds.as_deref().map(parse_seconds).transpose()?,
        resolution: Some(format!("{width}x{height}")),
        fps: None,
        seed: None,
        steps: None,
        guidance_scale: None,
        negative_prompt: None,
        preview_every: None,
        vae_tiling: None,
        sampler: None,
        step_cache: None,
        priority: 0,
        model: Some(info.name.clone()),
        webhook_url: None,
        image: fields.image,
        last_image: None,
    };
    let shape = generate::shape(&body, info, &app.engine.config().limits).map_err(|mut e| {
        if e.field.as_deref() == Some("duration") {
            e.field = Some("seconds".into());
        }
        e
    })?;
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string);
    let request = with_files(generate::engine_request(body, shape, &scope.0, key.as_deref(), &app.results_dir));
    submit(&app, &scope, request, None).await
}

async fn read_form(mut form: Multipart) -> Result<Create, ApiError> {
    let mut out = Create::default();
    while let Some(field) = form.next_field().await.map_err(|e| ApiError::invalid("body", e.body_text()))? {
        let name = field.name().unwrap_or_default().to_string();
        let bad = |e: axum::extract::multipart::MultipartError| ApiError::invalid(&name, e.body_text());
        match name.as_str() {
            "prompt" => out.prompt = Some(field.text().await.map_err(bad)?),
            "model" => out.model = Some(field.text().await.map_err(bad)?),
            "seconds" => out.seconds = Some(field.text().await.map_err(bad)?),
            "size" => out.size = Some(field.text().await.map_err(bad)?),
            "input_reference" => {
                let bytes = field.bytes().await.map_err(bad)?;
                out.image = Some(ImageInput::Base64(base64::engine::general_purpose::STANDARD.encode(&bytes)));
            }
            "input_reference[image_url]" => out.image = Some(data_url(&field.text().await.map_err(bad)?)?),
            "input_reference[file_id]" => return Err(file_id()),
            other => return Err(ApiError::invalid(other, "is not a field of a video request")),
        }
    }
    Ok(out)
}

fn read_json(bytes: &[u8]) -> Result<Create, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        prompt: String,
        model: Option<String>,
        seconds: Option<Value>,
        size: Option<String>,
        input_reference: Option<Reference>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Reference {
        image_url: Option<String>,
        file_id: Option<String>,
    }
    let body: Body = serde_json::from_slice(bytes).map_err(|e| ApiError::invalid("body", format!("bad JSON: {e}")))?;
    let image = match body.input_reference {
        Some(Reference { file_id: Some(_), .. }) => return Err(file_id()),
        Some(Reference { image_url: Some(url), .. }) => Some(data_url(&url)?),
        _ => None,
    };
    let seconds = body.seconds.map(|s| match s {
        Value::String(s) => s,
        other => other.to_string(),
    });
    Ok(Create { prompt: Some(body.prompt), model: body.model, seconds, size: body.size, image })
}

fn file_id() -> ApiError {
    ApiError::invalid("input_reference", "a file_id is not supported here: upload the image itself, or a data URL")
}

/// `data:image/png;base64,…` (or jpeg) to the image's bytes; a remote URL is refused (the server fetches nothing).
fn data_url(url: &str) -> Result<ImageInput, ApiError> {
    let rest = url.strip_prefix("data:").ok_or_else(|| {
        ApiError::invalid(
            "input_reference",
            "image_url must be a data URL (data:image/png;base64,…); no URL is fetched",
        )
    })?;
    let (kind, data) = rest
        .split_once(";base64,")
        .ok_or_else(|| ApiError::invalid("input_reference", "image_url must be a base64 data URL"))?;
    if !matches!(kind, "image/png" | "image/jpeg" | "image/jpg") {
        return Err(ApiError::invalid("input_reference", format!("{kind} is not image/png or image/jpeg")));
    }
    Ok(ImageInput::Base64(data.to_string()))
}

/// `"4"` (or `"4.5"`) seconds.
fn parse_seconds(text: &str) -> Result<f64, ApiError> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0)
        .ok_or_else(|| ApiError::invalid("seconds", format!("{text:?} is not a positive number of seconds")))
}

/// `"WxH"`, each side snapped to the nearest multiple of `m` the model needs (at least `m`).
fn snap_size(text: &str, m: u32) -> Result<(u32, u32), ApiError> {
    let bad = || ApiError::invalid("size", format!("{text:?} is not WIDTHxHEIGHT in pixels, like \"1280x720\""));
    let (w, h) = text
        .trim()
        .to_ascii_lowercase()
        .split_once('x')
        .map(|(w, h)| (w.to_string(), h.to_string()))
        .ok_or_else(bad)?;
    let (w, h): (u32, u32) = (w.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?);
    if w == 0 || h == 0 || w > 100_000 || h > 100_000 {
        return Err(bad());
    }
    let snap = |v: u32| ((v as f64 / m as f64).round().max(1.0) as u32) * m;
    Ok((snap(w), snap(h)))
}

/// Adds the animated PNG beside the MP4 (the thumbnail's and spritesheet's frames).
fn with_files(mut request: Request) -> Request {
    if let Some(mp4) = request.outputs.first().cloned() {
        request.outputs.push(format!("{}.png", mp4.trim_end_matches(".mp4")));
    }
    request
}

/// Submits and answers the new video object (200, as OpenAI does).
async fn submit(
    app: &App,
    scope: &Scope,
    mut request: Request,
    remixed_from: Option<JobId>,
) -> Result<Response, ApiError> {
    let fps = request.fps;
    if let Some(from) = remixed_from {
        request.metadata.insert(REMIXED_FROM.into(), from.to_string());
    }
    let model =
        app.engine.models().get(request.model.as_deref()).map_err(|e| ApiError::invalid("model", e.message()))?;
    let info = model.info().clone();
    let frames = request.num_frames.unwrap_or(info.defaults.num_frames);
    let fps = fps.unwrap_or(info.defaults.fps);
    request.metadata.insert(SECONDS.into(), seconds_text(frames as f64 / fps));
    request.metadata.insert(
        SIZE.into(),
        format!("{}x{}", request.width.unwrap_or(info.defaults.width), request.height.unwrap_or(info.defaults.height)),
    );
    let submitted = request.clone();
    let job = engine_call(app, move |e| e.submit(submitted)).await?.map_err(|e| openai_submit_error(&e))?;
    app.videos.lock().expect("not poisoned").push((scope.0.clone(), job.0));
    let status = engine_call(app, move |e| e.poll(job)).await?.map_err(|e| ApiError::from_engine(&e))?;
    Ok(Json(video_json(app, &status, &request)).into_response())
}

fn openai_submit_error(e: &vgen_core::Error) -> ApiError {
    let mut out = ApiError::from_submit(e);
    // This door's names for the engine's fields.
    out.field = out.field.map(|f| match f.as_str() {
        "resolution" => "size".to_string(),
        "duration" => "seconds".to_string(),
        "image" => "input_reference".to_string(),
        _ => f,
    });
    if out.field.is_none() && e.message().starts_with("image") {
        out.field = Some("input_reference".into());
    }
    out
}

/// Seconds as OpenAI writes them: `"4"`, or `"4.125"` when the frames do not make whole seconds.
fn seconds_text(s: f64) -> String {
    let text = format!("{s:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn video_json(app: &App, status: &JobStatus, request: &Request) -> Value {
    let status_name = match status.state {
        JobState::Queued => "queued",
        JobState::Running => "in_progress",
        JobState::Succeeded => "completed",
        JobState::Failed | JobState::Cancelled => "failed",
    };
    let secs = |ms: u64| (ms / 1000) as i64;
    let ttl = app.engine.config().retention.ttl_ms;
    let error = status.error.as_ref().map(|e| json!({"code": e.code.name(), "message": e.message}));
    let model = request.model.clone().or_else(|| app.engine.models().get(None).ok().map(|m| m.info().name.clone()));
    json!({
        "id": status.id.to_string(),
        "object": "video",
        "status": status_name,
        "progress": if status.state == JobState::Succeeded { 100 } else { (status.progress * 100.0).floor() as i64 },
        "created_at": secs(status.submitted_at_ms),
        "completed_at": status.finished_at_ms.map(secs),
        "expires_at": status.finished_at_ms.map(|f| secs(f + ttl)),
        "model": model,
        "seconds": request.metadata.get(SECONDS),
        "size": request.metadata.get(SIZE),
        "prompt": request.prompt,
        "remixed_from_video_id": request.metadata.get(REMIXED_FROM),
        "error": error,
    })
}

/// A video of this scope made through this door: its job, request and status.
async fn owned_video(app: &App, id: &str, scope: &Scope) -> Result<(JobId, Request, JobStatus), ApiError> {
    let (job, request) = owned_job(app, id, scope).await?;
    if !request.metadata.contains_key(SIZE) {
        return Err(ApiError::not_found(id));
    }
    let status = engine_call(app, move |e| e.poll(job)).await?.map_err(|e| ApiError::from_engine(&e))?;
    Ok((job, request, status))
}

async fn retrieve(
    State(app): State<Arc<App>>,
    Extension(scope): Extension<Scope>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (_, request, status) = owned_video(&app, &id, &scope).await?;
    let mut response = Json(video_json(&app, &status, &request)).into_response();
    if !status.state.is_terminal() {
        // A third of the time left, between 50 ms and 2 s: a few polls per video however long it takes.
        let after = status.eta_ms.map_or(1000, |eta| (eta / 3).clamp(50, 2000));
        response.headers_mut().insert("openai-poll-after-ms", HeaderValue::from(after));
    }
    Ok(response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    after: Option<String>,
    limit: Option<usize>,
    order: Option<String>,
}

async fn list(
    State(app): State<Arc<App>>,
    Extension(scope): Extension<Scope>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid("limit", format!("{limit} is not 1 to 100")));
    }
    let descending = match q.order.as_deref() {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(other) => return Err(ApiError::invalid("order", format!("{other:?} is not \"asc\" or \"desc\""))),
    };
    let mut ids: Vec<u64> =
        app.videos.lock().expect("not poisoned").iter().filter(|(s, _)| *s == scope.0).map(|(_, id)| *id).collect();
    if descending {
        ids.reverse();
    }
    if let Some(after) = &q.after {
        let at = ids
            .iter()
            .position(|id| JobId(*id).to_string() == *after)
            .ok_or_else(|| ApiError::invalid("after", format!("{after:?} is not a video of this list")))?;
        ids.drain(..=at);
    }
    let mut data = Vec::new();
    let mut more = false;
    for id in ids {
        if data.len() == limit {
            more = true;
            break;
        }
        // A video released or expired since is left out.
        if let Ok((_, request, status)) = owned_video(&app, &JobId(id).to_string(), &scope).await {
            data.push(video_json(&app, &status, &request));
        }
    }
    let first = data.first().map(|v| v["id"].clone());
    let last = data.last().map(|v| v["id"].clone());
    Ok(Json(json!({"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": more}))
        .into_response())
}

async fn delete(
    State(app): State<Arc<App>>,
    Extension(scope): Extension<Scope>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (job, request, _) = owned_video(&app, &id, &scope).await?;
    forget(&app, job, &request).await?;
    app.videos.lock().expect("not poisoned").retain(|(_, v)| *v != job.0);
    Ok(Json(json!({"id": id, "object": "video.deleted", "deleted": true})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContentQuery {
    variant: Option<String>,
}

async fn content(
    State(app): State<Arc<App>>,
    Extension(scope): Extension<Scope>,
    Path(id): Path<String>,
    query: Result<Query<ContentQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let variant = q.variant.unwrap_or_else(|| "video".into());
    if !matches!(variant.as_str(), "video" | "thumbnail" | "spritesheet") {
        return Err(ApiError::invalid("variant", format!("{variant:?} is not video, thumbnail or spritesheet")));
    }
    let (job, request, status) = owned_video(&app, &id, &scope).await?;
    match status.state {
        JobState::Succeeded => {}
        JobState::Failed | JobState::Cancelled => {
            let why = status.error.map(|e| e.message).unwrap_or_default();
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "video_failed",
                format!("{id} failed and has no content: {why}"),
            ));
        }
        state => {
            // The SDK retries a 409, and a retry may find it done.
            let message =
                format!("{id} is {} ({:.0}%); poll it until completed", state_name(state), status.progress * 100.0);
            return Err(ApiError::new(StatusCode::CONFLICT, "not_ready", message));
        }
    }
    let file = |i: usize| {
        request
            .outputs
            .get(i)
            .map(std::path::PathBuf::from)
            .filter(|p| p.is_absolute() && p.starts_with(&app.results_dir))
    };
    let gone = || ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("{job}'s files are no longer there"));
    let (bytes, kind) = if variant == "video" {
        (tokio::fs::read(file(0).ok_or_else(gone)?).await.map_err(|_| gone())?, "video/mp4")
    } else {
        let frames = tokio::fs::read(file(1).ok_or_else(gone)?).await.map_err(|_| gone())?;
        let sheet = variant == "spritesheet";
        let png = tokio::task::spawn_blocking(move || crate::sheet::render(&frames, sheet))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(ApiError::internal)?;
        (png, "image/png")
    };
    let mut response = Body::from(bytes).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    Ok(response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemixBody {
    prompt: String,
}

async fn remix(
    State(app): State<Arc<App>>,
    Extension(scope): Extension<Scope>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let RemixBody { prompt } =
        serde_json::from_slice(&body).map_err(|e| ApiError::invalid("prompt", format!("bad JSON: {e}")))?;
    if prompt.trim().is_empty() {
        return Err(ApiError::invalid("prompt", "is empty"));
    }
    let (job, original, _) = owned_video(&app, &id, &scope).await?;
    // The same settings (model, size, length, seed, image) with the new prompt, into new files.
    let mut request = original.clone();
    request.prompt = prompt;
    request.idempotency_key = None;
    let stem = generate::hex(&rand::random::<[u8; 16]>());
    request.outputs = vec![app.results_dir.join(format!("{stem}.mp4")).to_string_lossy().into_owned()];
    request = with_files(request);
    request.metadata.retain(|k, _| k == OWNER);
    submit(&app, &scope, request, Some(job)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_snap_to_the_model_multiple_and_bad_ones_name_the_field() {
        assert_eq!(snap_size("1280x720", 16).unwrap(), (1280, 720));
        assert_eq!(snap_size("70x50", 16).unwrap(), (64, 48));
        assert_eq!(snap_size(" 8X8 ", 16).unwrap(), (16, 16), "at least one multiple");
        for bad in ["", "x", "64", "64x", "0x64", "-1x4", "axb", "200000x2"] {
            assert_eq!(snap_size(bad, 16).unwrap_err().field.as_deref(), Some("size"), "{bad}");
        }
    }

    #[test]
    fn seconds_parse_and_print_as_openai_writes_them() {
        assert_eq!(parse_seconds("4").unwrap(), 4.0);
        assert_eq!(parse_seconds(" 1.5 ").unwrap(), 1.5);
        for bad in ["", "four", "0", "-2", "NaN", "inf"] {
            assert_eq!(parse_seconds(bad).unwrap_err().field.as_deref(), Some("seconds"), "{bad}");
        }
        assert_eq!(seconds_text(4.0), "4");
        assert_eq!(seconds_text(9.0 / 8.0), "1.125");
        assert_eq!(seconds_text(81.0 / 16.0), "5.062", "to the millisecond");
    }

    #[test]
    fn a_reference_is_a_data_url_of_a_png_or_jpeg_and_nothing_is_fetched() {
        assert_eq!(data_url("data:image/png;base64,AAAA").unwrap(), ImageInput::Base64("AAAA".into()));
        assert!(data_url("data:image/jpeg;base64,AAAA").is_ok());
        for bad in ["https://example.com/a.png", "data:image/gif;base64,AAAA", "data:image/png,AAAA"] {
            assert_eq!(data_url(bad).unwrap_err().field.as_deref(), Some("input_reference"), "{bad}");
        }
    }
}
