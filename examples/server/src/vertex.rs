//! Vertex AI's long-running video predictions, as Google's `google-genai` SDK calls them in Vertex mode
//! (`genai.Client(vertexai=True, api_key=..., http_options=HttpOptions(base_url=...))`, then
//! `models.generate_videos` and `operations.get`): another front door onto the same engine, tokens (the SDK's
//! API key, sent as `x-goog-api-key`), scopes and limits.
//! - `POST /v1beta1/publishers/google/models/{model}:predictLongRunning` with `instances[0]` (`prompt`, `image`
//!   and `lastFrame` as `{bytesBase64Encoded, mimeType}`) and `parameters` (`durationSeconds`, `aspectRatio`,
//!   `resolution`, `seed`, `negativePrompt`, `sampleCount` 1, `fps`) answers `{"name": ".../operations/job-N"}`;
//! - `POST /v1beta1/publishers/google/models/{model}:fetchPredictOperation` with `{"operationName": name}` answers
//!   `{name}` while it runs, then `{name, done: true, response: {videos: [{bytesBase64Encoded, mimeType}]}}` or
//!   `{name, done: true, error: {code, message}}`;
//! - errors are Google's envelope, `{"error": {"code", "message", "status"}}`.

use crate::auth::Scope;
use crate::error::ApiError;
use crate::generate::{self, GenerateBody};
use crate::routes::{App, engine_call, owned_job};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use vgen_core::engine::JobState;
use vgen_core::engine::image::ImageInput;

pub fn router() -> Router<Arc<App>> {
    Router::new().route("/v1beta1/publishers/google/models/{action}", post(call))
}

/// Google's error envelope for `/v1beta1`, with the gRPC status name of each HTTP status.
pub fn envelope(status: StatusCode, message: &str) -> Value {
    let name = match status.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        413 => "INVALID_ARGUMENT",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    };
    json!({"error": {"code": status.as_u16(), "message": message, "status": name}})
}

/// `{model}:predictLongRunning` or `{model}:fetchPredictOperation`.
async fn call(
    State(app): State<Arc<App>>,
    Extension(scope): Extension<Scope>,
    Path(action): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    match action.rsplit_once(':') {
        Some((model, "predictLongRunning")) => predict(&app, &scope, model, &body).await,
        Some((_, "fetchPredictOperation")) => fetch(&app, &scope, &body).await,
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no method {action:?}"))),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Predict {
    instances: Vec<Instance>,
    #[serde(default)]
    parameters: Parameters,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Instance {
    prompt: Option<String>,
    image: Option<Picture>,
    last_frame: Option<Picture>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Picture {
    bytes_base64_encoded: Option<String>,
    gcs_uri: Option<String>,
    mime_type: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Parameters {
    duration_seconds: Option<f64>,
    aspect_ratio: Option<String>,
    resolution: Option<String>,
    seed: Option<u64>,
    negative_prompt: Option<String>,
    sample_count: Option<u32>,
    fps: Option<f64>,
}

fn picture(field: &str, p: Option<Picture>) -> Result<Option<ImageInput>, ApiError> {
    let Some(p) = p else { return Ok(None) };
    if p.gcs_uri.is_some() {
        return Err(ApiError::invalid(field, "a gcsUri is not fetched here: send bytesBase64Encoded"));
    }
    if let Some(kind) = p.mime_type.as_deref().filter(|k| !matches!(*k, "image/png" | "image/jpeg")) {
        return Err(ApiError::invalid(field, format!("{kind} is not image/png or image/jpeg")));
    }
    let data = p.bytes_base64_encoded.ok_or_else(|| ApiError::invalid(field, "needs bytesBase64Encoded"))?;
    Ok(Some(ImageInput::Base64(data)))
}

/// `"720p"` at `"16:9"` (or `"9:16"`): the short side is the resolution's number.
fn frame_size(
    resolution: Option<&str>,
    aspect: Option<&str>,
    m: u32,
    defaults: (u32, u32),
) -> Result<Option<String>, ApiError> {
    let portrait = match aspect {
        None | Some("16:9") => false,
        Some("9:16") => true,
        Some(other) => return Err(ApiError::invalid("aspectRatio", format!("{other:?} is not \"16:9\" or \"9:16\""))),
    };
    let short = match resolution {
        Some(r) => r
            .strip_suffix('p')
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|n| (1..=4320).contains(n))
            .ok_or_else(|| ApiError::invalid("resolution", format!("{r:?} is not like \"720p\"")))?,
        None if aspect.is_none() => return Ok(None),
        None => defaults.0.min(defaults.1),
    };
    let snap = |v: f64| ((v / m as f64).round().max(1.0) as u32) * m;
    let (long, short) = (snap(short as f64 * 16.0 / 9.0), snap(short as f64));
    Ok(Some(if portrait { format!("{short}x{long}") } else { format!("{long}x{short}") }))
}

async fn predict(app: &App, scope: &Scope, model: &str, body: &[u8]) -> Result<Response, ApiError> {
    let Predict { mut instances, parameters: p } =
        serde_json::from_slice(body).map_err(|e| ApiError::invalid("body", format!("bad JSON: {e}")))?;
    if instances.len() != 1 {
        return Err(ApiError::invalid("instances", "this server makes one video per request: send one instance"));
    }
    if p.sample_count.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid("sampleCount", "this server makes one video per request: 1"));
    }
    let instance = instances.remove(0);
    let prompt = instance.prompt.ok_or_else(|| ApiError::invalid("prompt", "is required"))?;
    let chosen = app.engine.models().get(Some(model)).map_err(|e| ApiError::invalid("model", e.message()))?;
    let info = chosen.info();
    let resolution = frame_size(
        p.resolution.as_deref(),
        p.aspect_ratio.as_deref(),
        info.size_multiple.max(1),
        (info.defaults.width, info.defaults.height),
    )?;
    let body = GenerateBody {
        segments: Vec::new(),
        prompt,
        duration: p.duration_seconds,
        resolution,
        fps: p.fps,
        seed: p.seed,
        steps: None,
        guidance_scale: None,
        negative_prompt: p.negative_prompt,
        preview_every: None,
        vae_tiling: None,
        sampler: None,
        step_cache: None,
        priority: 0,
        model: Some(info.name.clone()),
        webhook_url: None,
        image: picture("image", instance.image)?,
        last_image: picture("lastFrame", instance.last_frame)?,
    };
    let shape = generate::shape(&body, info, &app.engine.config().limits).map_err(|mut e| {
        e.field = e.field.map(|f| if f == "duration" { "durationSeconds".into() } else { f });
        e
    })?;
    let request = generate::engine_request(body, shape, &scope.0, None, &app.results_dir);
    let job = engine_call(app, move |e| e.submit(request)).await?.map_err(|e| {
        let mut out = ApiError::from_submit(&e);
        if e.message().starts_with("last_image") {
            out.field = Some("lastFrame".into());
        }
        out
    })?;
    Ok(Json(json!({"name": format!("publishers/google/models/{}/operations/{job}", info.name)})).into_response())
}

async fn fetch(app: &App, scope: &Scope, body: &[u8]) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Fetch {
        operation_name: String,
    }
    let Fetch { operation_name: name } =
        serde_json::from_slice(body).map_err(|e| ApiError::invalid("operationName", format!("bad JSON: {e}")))?;
    let id = name.rsplit_once("/operations/").map(|(_, id)| id).unwrap_or(&name).to_string();
    let (job, request) = owned_job(app, &id, scope).await?;
    let status = engine_call(app, move |e| e.poll(job)).await?.map_err(|e| ApiError::from_engine(&e))?;
    let answer = match status.state {
        JobState::Queued | JobState::Running => json!({"name": name}),
        JobState::Succeeded => {
            let path =
                request.outputs.first().map(std::path::PathBuf::from).filter(|p| p.starts_with(&app.results_dir));
            let gone =
                || ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("{job}'s video is no longer there"));
            let bytes = tokio::fs::read(path.ok_or_else(gone)?).await.map_err(|_| gone())?;
            json!({"name": name, "done": true, "response": {
                "@type": "type.googleapis.com/cloud.ai.large_models.vision.GenerateVideoResponse",
                "videos": [{"bytesBase64Encoded": base64::engine::general_purpose::STANDARD.encode(bytes), "mimeType": "video/mp4"}],
            }})
        }
        JobState::Failed | JobState::Cancelled => {
            let e = status.error.unwrap_or_else(|| vgen_core::engine::JobError {
                code: vgen_core::error::ErrorCode::Cancelled,
                message: "cancelled".into(),
                retryable: false,
            });
            json!({"name": name, "done": true, "error": {"code": grpc_code(e.code), "message": e.message}})
        }
    };
    Ok(Json(answer).into_response())
}

/// The google.rpc.Code of an engine error.
fn grpc_code(code: vgen_core::error::ErrorCode) -> u32 {
    use vgen_core::error::ErrorCode as C;
    match code {
        C::Cancelled => 1,
        C::InvalidArgument => 3,
        C::DeadlineExceeded | C::Timeout => 4,
        C::NotFound => 5,
        C::AlreadyExists => 6,
        C::ResourceExhausted | C::QueueFull => 8,
        C::Unsupported => 12,
        C::Unavailable | C::ShuttingDown => 14,
        _ => 13,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_and_aspect_give_a_size_the_model_can_make() {
        assert_eq!(frame_size(Some("720p"), None, 16, (64, 64)).unwrap().as_deref(), Some("1280x720"));
        assert_eq!(frame_size(Some("720p"), Some("9:16"), 16, (64, 64)).unwrap().as_deref(), Some("720x1280"));
        assert_eq!(frame_size(Some("144p"), Some("16:9"), 16, (64, 64)).unwrap().as_deref(), Some("256x144"));
        assert_eq!(frame_size(None, None, 16, (64, 64)).unwrap(), None, "the model's default size");
        assert_eq!(frame_size(None, Some("9:16"), 16, (64, 48)).unwrap().as_deref(), Some("48x80"));
        assert_eq!(frame_size(Some("big"), None, 16, (64, 64)).unwrap_err().field.as_deref(), Some("resolution"));
        assert_eq!(frame_size(None, Some("4:3"), 16, (64, 64)).unwrap_err().field.as_deref(), Some("aspectRatio"));
    }

    #[test]
    fn google_errors_carry_the_grpc_status_name() {
        let e = envelope(StatusCode::NOT_FOUND, "no job job-9");
        assert_eq!(e["error"]["status"], "NOT_FOUND");
        assert_eq!(e["error"]["code"], 404);
        assert_eq!(grpc_code(vgen_core::error::ErrorCode::InvalidArgument), 3);
    }
}
