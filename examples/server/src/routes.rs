//! The HTTP routes: submit, status, video, cancel (and the WebSocket in `progress.rs`).
//!
//! Nothing about a job is kept only in this process: its owner and webhook are in the request's metadata and its
//! file is the request's output, all read back with `Engine::request`, so any process sharing the engine's state
//! can serve any job. Every engine call runs on tokio's blocking pool ([`engine_call`]): the in-process engine
//! answers in microseconds, but a distributed one may wait on the network.

use crate::auth::{Scope, Tokens, require_token};
use crate::error::ApiError;
use crate::generate::{self, OWNER, WEBHOOK_URL};
use crate::progress;
use crate::status::{parse_job_id, state_name, status_json};
use crate::webhook::Due;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};
use vgen_core::engine::{Callback, Engine, EventKind, JobId, JobState, Request};
use vgen_core::error::ErrorCode;

/// What every handler shares.
pub struct App {
    pub engine: Arc<Engine>,
    /// Absolute, so the engine writes where the video route reads.
    pub results_dir: PathBuf,
    pub public_url: Option<String>,
    /// `http://<bound address>`, for links when there is neither a public URL nor a `Host` header.
    pub listen_url: String,
    pub max_body_bytes: usize,
    pub max_prompt_chars: usize,
    /// Where finished jobs with a webhook are sent; `None` when no webhook secret is configured.
    pub due: Option<mpsc::UnboundedSender<Due>>,
    /// The addresses webhooks may go to.
    pub destinations: crate::destination::Destinations,
    /// The id of every job with a new event (the engine-wide callback), for the WebSockets.
    pub events: broadcast::Sender<JobId>,
    /// The videos made through the OpenAI door, (scope, job id) in the order they were made: what
    /// `GET /v1/videos` lists (this process's; the jobs themselves live in the engine).
    pub videos: std::sync::Mutex<Vec<(String, u64)>>,
}

pub fn router(app: Arc<App>, tokens: Arc<Tokens>) -> Router {
    let limit = app.max_body_bytes;
    Router::new()
        .route("/generate", post(submit))
        .route("/models", get(crate::page::models))
        .route("/jobs/{id}", get(job).delete(crate::page::delete))
        .route("/jobs/{id}/preview", get(crate::page::preview))
        .route("/jobs/{id}/video", get(video))
        .route("/jobs/{id}/cancel", post(cancel))
        .route("/progress/{id}", get(progress::watch))
        .merge(crate::openai::router())
        .merge(crate::vertex::router())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(tokens, require_token))
        // The page needs no token (it asks for one); added after the token layer, so outside it.
        .route("/", get(crate::page::index))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .layer(axum::middleware::from_fn(crate::envelope::rewrite))
        .with_state(app)
}

/// Runs an engine call on the blocking pool.
pub async fn engine_call<T: Send + 'static>(
    app: &App,
    f: impl FnOnce(&Engine) -> T + Send + 'static,
) -> Result<T, ApiError> {
    let engine = app.engine.clone();
    tokio::task::spawn_blocking(move || f(&engine)).await.map_err(|e| ApiError::internal(format!("engine call: {e}")))
}

/// The job `text` names, if this scope owns it. Anything else, another scope's job included, is 404.
pub async fn owned_job(app: &App, text: &str, scope: &Scope) -> Result<(JobId, Request), ApiError> {
    let id = parse_job_id(text).ok_or_else(|| ApiError::not_found(text))?;
    let request = match engine_call(app, move |e| e.request(id)).await? {
        Ok(r) => r,
        Err(e) if e.code() == ErrorCode::NotFound => return Err(ApiError::not_found(text)),
        Err(e) => return Err(ApiError::from_engine(&e)),
    };
    if request.metadata.get(OWNER) != Some(&scope.0) {
        return Err(ApiError::not_found(text));
    }
    Ok((id, request))
}

/// Cancels a job if it still runs, forgets it, and deletes its files from the results folder (what every door's
/// delete does; a file outside the folder is never touched).
pub async fn forget(app: &App, job: JobId, request: &Request) -> Result<(), ApiError> {
    engine_call(app, move |e| {
        let _ = e.cancel(job);
        e.release(job)
    })
    .await?
    .map_err(|e| ApiError::from_engine(&e))?;
    for file in request.outputs.iter().filter(|f| std::path::Path::new(f).starts_with(&app.results_dir)) {
        let _ = tokio::fs::remove_file(file).await;
    }
    Ok(())
}

/// The base of the URLs handed to clients: the configured public URL, else the host the client asked for.
pub fn base_url(app: &App, headers: &HeaderMap) -> String {
    if let Some(url) = &app.public_url {
        return url.trim_end_matches('/').to_string();
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match host {
        Some(h) if !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c)) => {
            format!("http://{h}")
        }
        _ => app.listen_url.clone(),
    }
}

async fn submit(
    State(app): State<Arc<App>>,
    Extension(scope): Extension<Scope>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bytes = body.map_err(|r| {
        let code = if r.status() == StatusCode::PAYLOAD_TOO_LARGE { "payload_too_large" } else { "invalid_argument" };
        let message = if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            format!("the body is larger than {} bytes", app.max_body_bytes)
        } else {
            r.body_text()
        };
        ApiError::new(r.status(), code, message)
    })?;
    let body = generate::parse_body(&bytes)?;
    let chars = body.prompt.chars().count();
    if chars > app.max_prompt_chars {
        return Err(ApiError::invalid(
            "prompt",
            format!("has {chars} characters; the limit is {}", app.max_prompt_chars),
        ));
    }
    if let Some(url) = &body.webhook_url {
        if app.due.is_none() {
            return Err(ApiError::invalid("webhook_url", "this server has no webhook secret configured"));
        }
        generate::check_webhook_url(url, &app.destinations)?;
    }
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str() {
            Ok(k) if !k.is_empty() && k.len() <= 256 => Some(k.to_string()),
            _ => return Err(ApiError::invalid("Idempotency-Key", "must be 1 to 256 visible ASCII characters")),
        },
    };
    let model = app.engine.models().get(body.model.as_deref()).map_err(|e| ApiError::from_submit(&e))?;
    let shape = generate::shape(&body, model.info(), &app.engine.config().limits)?;
    let request = generate::engine_request(body, shape, &scope.0, key.as_deref(), &app.results_dir);
    let callback = webhook_callback(&app, &request);
    let id =
        engine_call(&app, move |e| e.submit_with(request, callback)).await?.map_err(|e| ApiError::from_submit(&e))?;
    let base = base_url(&app, &headers);
    let body = json!({
        "job_id": id.to_string(),
        "status_url": format!("{base}/jobs/{id}"),
        "progress_url": format!("{}/progress/{id}", base.replacen("http", "ws", 1)),
    });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// The job's own callback, for its webhook: it hands the finished job to the delivery task and returns, so the
/// engine's dispatcher thread never waits on the network. Registered only by the process that accepted the job
/// (an idempotent repeat gets the first job, whose callback is already there), so each webhook has one sender.
fn webhook_callback(app: &App, request: &Request) -> Option<Callback> {
    let url = request.metadata.get(WEBHOOK_URL)?.clone();
    let due = app.due.clone()?;
    Some(Arc::new(move |event: &vgen_core::engine::Event| {
        if let EventKind::Finished { .. } = event.kind {
            let _ = due.send(Due { id: event.job, url: url.clone() });
        }
    }))
}

async fn job(
    State(app): State<Arc<App>>,
    Extension(scope): Extension<Scope>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (id, _) = owned_job(&app, &id, &scope).await?;
    let status = engine_call(&app, move |e| e.poll(id)).await?.map_err(|e| ApiError::from_engine(&e))?;
    Ok(Json(status_json(&status, &base_url(&app, &headers))))
}

async fn cancel(
    State(app): State<Arc<App>>,
    Extension(scope): Extension<Scope>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (id, _) = owned_job(&app, &id, &scope).await?;
    let (cancelled, status) = engine_call(&app, move |e| e.cancel(id).and_then(|c| Ok((c, e.poll(id)?))))
        .await?
        .map_err(|e| ApiError::from_engine(&e))?;
    Ok(Json(json!({"job_id": id.to_string(), "cancelled": cancelled, "status": state_name(status.state)})))
}

async fn video(
    State(app): State<Arc<App>>,
    Extension(scope): Extension<Scope>,
    Path(text): Path<String>,
) -> Result<Response, ApiError> {
    let (id, request) = owned_job(&app, &text, &scope).await?;
    let status = engine_call(&app, move |e| e.poll(id)).await?.map_err(|e| ApiError::from_engine(&e))?;
    match (status.state, &status.error) {
        (JobState::Succeeded, _) => {}
        (JobState::Failed | JobState::Cancelled, Some(e)) => {
            let message = format!("{id} {} and has no video: {}", state_name(status.state), e.message);
            return Err(ApiError::new(StatusCode::CONFLICT, e.code.name(), message));
        }
        (state, _) => {
            let message =
                format!("{id} is still {} ({:.0}%); try again later", state_name(state), status.progress * 100.0);
            return Err(ApiError::new(StatusCode::CONFLICT, "not_ready", message));
        }
    }
    // The file is the request's own output; only files inside the results folder are served.
    let path = request.outputs.first().map(PathBuf::from).filter(|p| {
        p.is_absolute()
            && p.starts_with(&app.results_dir)
            && !p.components().any(|c| c == std::path::Component::ParentDir)
    });
    let gone = || ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("{id}'s video file is no longer there"));
    let path = path.ok_or_else(gone)?;
    let file = tokio::fs::File::open(&path).await.map_err(|_| gone())?;
    let length = file.metadata().await.map_err(|_| gone())?.len();
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let disposition = format!("inline; filename=\"{id}.mp4\"");
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp4"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    h.insert(header::CONTENT_DISPOSITION, HeaderValue::from_str(&disposition).expect("an id is plain ASCII"));
    Ok(response)
}
