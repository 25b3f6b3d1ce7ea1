//! `POST /generate`: the body clients send, and how it becomes an engine [`Request`].
//!
//! Clients speak in seconds and "480p"; the engine speaks in frames and pixels that its model accepts. The
//! conversion happens here, against the chosen model's rules ([`ModelInfo`]) and the engine's limits, and a
//! request that cannot be met says which field to change.

use crate::error::ApiError;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;
use vgen_core::engine::image::ImageInput;
use vgen_core::engine::{FrameRule, Limits, Request};
use vgen_core::models::ModelInfo;

/// The metadata entry naming the scope that owns a job.
pub const OWNER: &str = "owner";
/// The metadata entry holding the job's webhook URL, if it has one.
pub const WEBHOOK_URL: &str = "webhook_url";
/// The longest webhook URL: what the engine keeps in one metadata value.
const MAX_URL_BYTES: usize = 512;

/// The body of `POST /generate`. Unknown fields are errors, so a typo is never silently ignored.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateBody {
    #[serde(default)]
    pub prompt: String,
    /// A storyboard instead of `prompt`: its parts, in order, each a prompt or `{"prompt": ..., "num_frames": 16}`.
    #[serde(default)]
    pub segments: Vec<vgen_core::engine::SegmentRequest>,
    /// Seconds of video. Left out, the model's default length.
    pub duration: Option<f64>,
    /// `"480p"` (that height, 16:9, both sides rounded to the model's size multiple) or `"WxH"` (exact).
    pub resolution: Option<String>,
    pub fps: Option<f64>,
    pub seed: Option<u64>,
    pub steps: Option<u32>,
    pub guidance_scale: Option<f64>,
    pub negative_prompt: Option<String>,
    /// A latent preview every this many steps (`GET /jobs/{id}/preview` serves the latest; the WebSocket says when).
    pub preview_every: Option<u32>,
    /// Decode in spatial tiles (true) or whole (false); left out, the model tiles frames past its pixel budget.
    pub vae_tiling: Option<bool>,
    /// The sampler, as the engine takes it: `{"kind": "euler", "flow_shift": 5, "timesteps": [1000, 750, 500, 250]}`.
    pub sampler: Option<vgen_core::schedulers::Sampler>,
    /// Step caching: `true`, or `{"threshold": 0.1}`.
    pub step_cache: Option<vgen_core::engine::StepCacheRequest>,
    #[serde(default)]
    pub priority: i32,
    pub model: Option<String>,
    /// Called once when the job finishes (http or https only).
    pub webhook_url: Option<String>,
    /// The first frame to animate, for a model that takes one: `{"base64": "<PNG or JPEG>"}` or `{"pixels": …}`
    /// as the engine takes it. A path is refused: the server reads no file a client names.
    pub image: Option<ImageInput>,
    /// The last frame, for a first–last frame model; the same forms.
    pub last_image: Option<ImageInput>,
}

/// What the body resolves to in the model's terms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shape {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub num_frames: Option<u32>,
    pub fps: Option<f64>,
}

/// Parses a body, naming the field of any error (malformed JSON and unknown fields included).
pub fn parse_body(bytes: &[u8]) -> Result<GenerateBody, ApiError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ApiError::invalid("body", "is not UTF-8 JSON"))?;
    if !text.trim_start().starts_with('{') {
        return Err(ApiError::invalid("body", "must be a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let body: GenerateBody = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        // Broken JSON is about the body as a whole, wherever the parser stopped; only data errors name a field.
        let syntax = !matches!(e.inner().classify(), serde_json::error::Category::Data);
        let path = if syntax { String::new() } else { e.path().to_string() };
        let message = e.into_inner().to_string();
        let named = ["unknown field `", "missing field `"].iter().find_map(|p| message.strip_prefix(p));
        let field = match named.and_then(|m| m.split_once('`')) {
            Some((name, _)) => name.to_string(),
            // `?` is serde_path_to_error's "somewhere unknown".
            None if path == "." || path.is_empty() || path.contains('?') => "body".to_string(),
            None => path,
        };
        ApiError::invalid(&field, format!("bad JSON: {message}"))
    })?;
    de.end().map_err(|e| ApiError::invalid("body", format!("bad JSON: {e}")))?;
    for (field, image) in [("image", &body.image), ("last_image", &body.last_image)] {
        if let Some(ImageInput::Path(_)) = image {
            return Err(ApiError::invalid(
                field,
                "a path on the server is not accepted over HTTP: send {\"base64\": \"<PNG or JPEG>\"} or {\"pixels\": …}",
            ));
        }
    }
    Ok(body)
}

/// Resolution and duration in the model's terms, checked against its rules and the engine's limits.
pub fn shape(body: &GenerateBody, model: &ModelInfo, limits: &Limits) -> Result<Shape, ApiError> {
    let (width, height) = match &body.resolution {
        Some(r) => {
            let (w, h) = parse_resolution(r, model.size_multiple.max(1))?;
            (Some(w), Some(h))
        }
        None => (None, None),
    };
    if let Some(fps) = body.fps {
        if !(fps.is_finite() && fps > 0.0) {
            return Err(ApiError::invalid("fps", format!("{fps} is not a positive number of frames a second")));
        }
    }
    let fps = body.fps.unwrap_or(model.defaults.fps);
    let num_frames = match body.duration {
        None => None,
        Some(d) => Some(frames_for(d, fps, model.frame_rule, limits.max_frames)?),
    };
    let fps = (body.fps.is_some() || body.duration.is_some()).then_some(fps);
    Ok(Shape { width, height, num_frames, fps })
}

/// `"480p"`: that height with a 16:9 width, each rounded to the nearest multiple of `m` (so `1080p` is
/// 1920×1088 on a model that needs multiples of 16). `"WxH"`: exactly that; the engine says if it does not fit.
fn parse_resolution(r: &str, m: u32) -> Result<(u32, u32), ApiError> {
    let bad = || ApiError::invalid("resolution", format!("{r:?} is not like \"480p\" or \"848x480\""));
    let text = r.trim().to_ascii_lowercase();
    if let Some(h) = text.strip_suffix('p') {
        let h: u32 = h.parse().map_err(|_| bad())?;
        if h == 0 || h > 100_000 {
            return Err(bad());
        }
        let round = |v: f64| ((v / m as f64).round().max(1.0) as u32) * m;
        return Ok((round(h as f64 * 16.0 / 9.0), round(h as f64)));
    }
    let (w, h) = text.split_once('x').ok_or_else(bad)?;
    Ok((w.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?))
}

/// The frame count nearest `duration · fps` that the model accepts.
fn frames_for(duration: f64, fps: f64, rule: FrameRule, max_frames: u32) -> Result<u32, ApiError> {
    if !(duration.is_finite() && duration > 0.0) {
        return Err(ApiError::invalid("duration", format!("{duration} is not a positive number of seconds")));
    }
    let exact = duration * fps;
    if exact.round() < 1.0 {
        return Err(ApiError::invalid("duration", format!("{duration} s at {fps} fps is less than one frame")));
    }
    let too_long = |frames: f64| {
        ApiError::invalid(
            "duration",
            format!(
                "{duration} s at {fps} fps is {frames} frames; the limit is {max_frames} frames ({:.2} s at {fps} fps)",
                max_frames as f64 / fps
            ),
        )
    };
    // Checked before converting, so a huge duration cannot overflow the count.
    if exact > max_frames as f64 + 4.0 {
        return Err(too_long(exact.round()));
    }
    let n = exact.round() as u32;
    let frames = match rule {
        FrameRule::Any => n,
        // 1 + 4k, the nearest (ties go up).
        FrameRule::OnePlusFourK => 1 + 4 * (((n - 1) as f64 / 4.0).round() as u32),
    };
    if frames > max_frames {
        return Err(too_long(frames as f64));
    }
    Ok(frames)
}

/// A webhook URL: absolute, http or https, with a host, short enough to keep in the job's metadata, and not an
/// address webhooks may not reach (a name is checked when a delivery resolves it).
pub fn check_webhook_url(url: &str, destinations: &crate::destination::Destinations) -> Result<(), ApiError> {
    if url.len() > MAX_URL_BYTES {
        return Err(ApiError::invalid("webhook_url", format!("has {} bytes; at most {MAX_URL_BYTES}", url.len())));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| ApiError::invalid("webhook_url", format!("{url:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(ApiError::invalid("webhook_url", format!("{url:?} must be an http or https URL with a host")));
    }
    destinations.check_url(&parsed).map_err(|e| ApiError::invalid("webhook_url", e))
}

/// The engine request for a checked body: the video goes to one MP4 file in `results_dir` and nowhere else
/// (`keep_frames: false`), and the owner and webhook go into the job's metadata, where every process that
/// shares the engine's state can read them.
pub fn engine_request(
    body: GenerateBody,
    shape: Shape,
    owner: &str,
    idempotency_key: Option<&str>,
    results_dir: &Path,
) -> Request {
    let mut metadata = BTreeMap::new();
    metadata.insert(OWNER.to_string(), owner.to_string());
    if let Some(url) = &body.webhook_url {
        metadata.insert(WEBHOOK_URL.to_string(), url.clone());
    }
    // A key is the client's, within its scope: two scopes using the same key get different jobs. The file name
    // follows from the key, so a repeated request is the same request and the engine returns the same job.
    let (engine_key, file) = match idempotency_key {
        Some(key) => {
            let scoped = hex(&Sha256::digest(format!("{owner}\n{key}").as_bytes()));
            let file = hex(&Sha256::digest(format!("file\n{scoped}").as_bytes())[..16]);
            (Some(scoped), file)
        }
        None => (None, hex(&rand::random::<[u8; 16]>())),
    };
    Request {
        prompt: body.prompt,
        segments: body.segments,
        negative_prompt: body.negative_prompt,
        width: shape.width,
        height: shape.height,
        num_frames: shape.num_frames,
        fps: shape.fps,
        steps: body.steps,
        guidance_scale: body.guidance_scale,
        seed: body.seed,
        model: body.model,
        image: body.image,
        last_image: body.last_image,
        priority: body.priority,
        preview_every: body.preview_every,
        vae_tiling: body.vae_tiling,
        sampler: body.sampler,
        step_cache: body.step_cache,
        idempotency_key: engine_key,
        outputs: vec![results_dir.join(format!("{file}.mp4")).to_string_lossy().into_owned()],
        keep_frames: Some(false),
        metadata,
        ..Request::default()
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolutions_round_to_the_model_multiple() {
        assert_eq!(parse_resolution("480p", 16).unwrap(), (848, 480));
        assert_eq!(parse_resolution("1080P", 16).unwrap(), (1920, 1088));
        assert_eq!(parse_resolution("144p", 16).unwrap(), (256, 144));
        assert_eq!(parse_resolution("64x48", 16).unwrap(), (64, 48));
        for bad in ["", "p", "480", "x480", "ax9", "-5p", "0p", "480i"] {
            assert_eq!(parse_resolution(bad, 16).unwrap_err().field.as_deref(), Some("resolution"), "{bad}");
        }
    }

    #[test]
    fn durations_become_counts_the_model_accepts() {
        assert_eq!(frames_for(5.0, 8.0, FrameRule::OnePlusFourK, 257).unwrap(), 41);
        assert_eq!(frames_for(1.0, 8.0, FrameRule::OnePlusFourK, 257).unwrap(), 9);
        assert_eq!(frames_for(1.0, 10.0, FrameRule::OnePlusFourK, 257).unwrap(), 9);
        assert_eq!(frames_for(1.5, 10.0, FrameRule::OnePlusFourK, 257).unwrap(), 17);
        assert_eq!(frames_for(1.0, 10.0, FrameRule::Any, 257).unwrap(), 10);
        assert_eq!(frames_for(0.1, 10.0, FrameRule::OnePlusFourK, 257).unwrap(), 1);
        for (d, fps) in [(-1.0, 8.0), (0.0, 8.0), (f64::NAN, 8.0), (0.01, 8.0), (60.0, 8.0), (1e300, 8.0)] {
            let e = frames_for(d, fps, FrameRule::OnePlusFourK, 257).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("duration"), "{d}");
        }
    }

    #[test]
    fn bodies_name_the_field_that_is_wrong() {
        let e = parse_body(br#"{"prompt": "x", "resolutoin": "480p"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("resolutoin"));
        let e = parse_body(br#"{"prompt": "x", "duration": "5"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("duration"));
        let e = parse_body(br#"{"prompt": "x""#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("body"));
        let e = parse_body(br#"{"prompt": "x", "image": {"path": "/etc/passwd"}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("image"), "a client names no file on the server");
        let e = parse_body(br#"{"prompt": "x", "image": {"base64": "AA=="}, "last_image": {"path": "a.png"}}"#)
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("last_image"));
        let body = parse_body(br#"{"prompt": "x", "image": {"base64": "AA=="}}"#).unwrap();
        let shape = Shape { width: None, height: None, num_frames: None, fps: None };
        let request = engine_request(body, shape, "s", None, Path::new("/r"));
        assert_eq!(request.image, Some(ImageInput::Base64("AA==".into())), "the image reaches the engine");
    }

    #[test]
    fn the_same_key_in_one_scope_names_the_same_file() {
        let body = || parse_body(br#"{"prompt": "x"}"#).unwrap();
        let shape = Shape { width: None, height: None, num_frames: None, fps: None };
        let dir = Path::new("/r");
        let a = engine_request(body(), shape, "s", Some("k"), dir);
        assert_eq!(a, engine_request(body(), shape, "s", Some("k"), dir));
        assert_ne!(a.outputs, engine_request(body(), shape, "t", Some("k"), dir).outputs);
        assert_ne!(a.outputs, engine_request(body(), shape, "s", None, dir).outputs);
        assert_eq!(a.metadata[OWNER], "s");
    }
}
