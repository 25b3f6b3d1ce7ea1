//! What a host asks for, and how it is checked before any work is done.
//!
//! A [`Request`] names only what the host cares about; every field left out takes the model's default. Validation
//! resolves it into [`Params`], the complete description of one generation, or says exactly what is wrong. Values
//! out of range are rejected, never clamped: a host that asked for 1000 steps and silently got 200 would be
//! misled.

use super::image::{self, Image, ImageInput};
use crate::error::{Error, Result};
use crate::models::ModelInfo;
use serde::{Deserialize, Serialize};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// A video request: a prompt, and for image-to-video an image to start from. Deserialising rejects unknown fields,
/// so a typo in a host's JSON is an error.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Request {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub num_frames: Option<u32>,
    pub fps: Option<f64>,
    pub steps: Option<u32>,
    pub guidance_scale: Option<f64>,
    /// The guidance scale of the low-noise expert, for a model with two (Wan2.2 A14B); the model's default (its
    /// `guidance_scale` unless its `vgen.json` says otherwise) when left out.
    pub guidance_scale_2: Option<f64>,
    /// The noise seed. Left out, the engine draws one and reports it in the result, so the video can be remade.
    pub seed: Option<u64>,
    /// The model's name; the engine's default model when left out.
    pub model: Option<String>,
    /// The video's first frame, for a model that animates an image (see [`ImageInput`]); resized to the video's
    /// size as diffusers' pipelines do.
    pub image: Option<ImageInput>,
    /// The video's last frame, for a first–last frame model.
    pub last_image: Option<ImageInput>,
    /// A storyboard: the video's parts, in order, each a prompt or `{"prompt": ..., "num_frames": ...}` (the
    /// frames it adds). Instead of `prompt`; needs a model that can continue from a frame (see
    /// `engine::storyboard`). One `prompt` with more `num_frames` than the model's native length is split into
    /// parts the same way.
    pub segments: Vec<super::storyboard::SegmentRequest>,
    /// Whether a storyboard's later parts get the colour correction at their joins (default true).
    pub color_match: Option<bool>,
    /// Higher runs first. FIFO within a priority; waiting jobs gain priority over time (aging).
    pub priority: i32,
    /// Milliseconds from submit after which the job fails with `deadline_exceeded`, queued or running.
    pub deadline_ms: Option<u64>,
    /// Submitting the same key again returns the same job.
    pub idempotency_key: Option<String>,
    /// Emit a preview every this many denoising steps.
    pub preview_every: Option<u32>,
    /// The sampler: `{"kind": "euler"|"unipc", "flow_shift": 5, "timesteps": [1000, 750, 500, 250]}`, each field
    /// optional, over the model's own (its scheduler, or its `vgen.json`'s `sampler`). Distilled models (a
    /// few-step LoRA) sample with a fixed timestep list and guidance 1, which skips the unconditional pass and the
    /// negative prompt's encoding. Part of the cache key.
    pub sampler: Option<crate::schedulers::Sampler>,
    /// Step caching (see `models::step_cache`): `true` for the default threshold, or `{"threshold": 0.1}`; a
    /// larger threshold skips more steps and changes the video more. Off by default. Part of the cache key.
    pub step_cache: Option<StepCacheRequest>,
    /// LoRA adapters to apply, each `{"path": "...", "scale": 0.8}` or `{"name": "...", "scale": 0.8}` (a name is
    /// `loras/{name}.safetensors` in a models folder). Scales default to 1 and are limited by
    /// `limits.max_lora_scale`. Part of the cache key, with a hash of each file.
    pub loras: Vec<LoraRef>,
    /// Decode the video in overlapping spatial tiles (diffusers' `enable_tiling()`: 256-pixel tiles every 192),
    /// which keeps the VAE's peak memory flat in resolution at the cost of slightly different pixels where tiles
    /// meet. Left out, a model tiles frames larger than its pixel budget (832 × 480 unless its `vgen.json` sets
    /// `vae_tiling_above_pixels`). Part of the cache key.
    pub vae_tiling: Option<bool>,
    /// Files for the engine to write, by extension (`.mp4`, `.gif`, `.png`, or a folder ending in `/`). Frames
    /// are encoded as they are decoded; each file appears, complete, only when the job succeeds.
    pub outputs: Vec<String>,
    /// Whether the result keeps the frames in memory (default true). `false` needs `outputs`: the video then
    /// goes only to its files, and memory no longer grows with the video's length.
    pub keep_frames: Option<bool>,
    /// The host's own labels (who asked, for what), kept with the job and readable from any node with
    /// `Engine::request`; the engine never interprets them, and they do not change the video or its cache key.
    /// At most 16 entries, keys of 1 to 64 bytes, values of at most 512.
    pub metadata: std::collections::BTreeMap<String, String>,
}

impl Request {
    /// A request for this prompt with every other field at its default.
    pub fn new(prompt: impl Into<String>) -> Self {
        Self { prompt: prompt.into(), ..Self::default() }
    }

    /// Parses a JSON request strictly: unknown fields and wrong types are errors that name the field.
    pub fn from_json(json: &str) -> Result<Self> {
        crate::error::from_json_strict(json, "request")
    }
}

/// A request's `step_cache`: on or off, or a threshold.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum StepCacheRequest {
    On(bool),
    Threshold { threshold: f64 },
}

impl<'de> Deserialize<'de> for StepCacheRequest {
    /// `true`, `false` or `{"threshold": x}`; anything else is an error that says so (serde's own message for an
    /// untagged enum names no form).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Threshold {
            threshold: f64,
        }
        let value = serde_json::Value::deserialize(d)?;
        if let serde_json::Value::Bool(on) = value {
            return Ok(StepCacheRequest::On(on));
        }
        serde_json::from_value::<Threshold>(value)
            .map(|t| StepCacheRequest::Threshold { threshold: t.threshold })
            .map_err(|e| {
                serde::de::Error::custom(format!("step_cache must be true, false or {{\"threshold\": 0.1}} ({e})"))
            })
    }
}

/// Limits that keep any single request from exhausting the machine. Part of the engine's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_width: u32,
    pub max_height: u32,
    pub max_frames: u32,
    pub max_steps: u32,
    pub max_prompt_chars: usize,
    pub max_guidance_scale: f64,
    pub max_fps: f64,
    pub max_priority: i32,
    /// The most pixels an `image` or `last_image` may have before resizing (a decoded image is 3 bytes a pixel).
    pub max_image_pixels: u64,
    /// The largest LoRA scale a request may give, either sign.
    pub max_lora_scale: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_width: 1920,
            max_height: 1920,
            max_frames: 257,
            max_steps: 200,
            max_prompt_chars: 2000,
            max_guidance_scale: 30.0,
            max_fps: 120.0,
            max_priority: 100,
            max_image_pixels: 4096 * 4096,
            max_lora_scale: 4.0,
        }
    }
}

/// Everything one generation needs, with every default resolved. This is what a model receives.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Params {
    pub prompt: String,
    pub negative_prompt: String,
    pub width: u32,
    pub height: u32,
    pub num_frames: u32,
    pub fps: f64,
    pub steps: u32,
    pub guidance_scale: f64,
    /// For a two-expert model only.
    pub guidance_scale_2: Option<f64>,
    pub seed: u64,
    pub preview_every: Option<u32>,
    /// The sampler, the request's choices over the model's defaults (`steps` is the length of its `timesteps`
    /// when it has them).
    pub sampler: crate::schedulers::Sampler,
    /// The step cache's threshold; None when it is off.
    pub step_cache: Option<f64>,
    /// Whether to decode in tiles; the model decides by its pixel budget when `None`.
    pub vae_tiling: Option<bool>,
    /// LoRA adapters, resolved to files.
    pub loras: Vec<Lora>,
    /// The first frame, decoded and resized to `width` × `height`.
    #[serde(skip)]
    pub image: Option<Arc<Image>>,
    /// The last frame, likewise.
    #[serde(skip)]
    pub last_image: Option<Arc<Image>>,
    /// A storyboard's parts (`prompt` is the first's, `num_frames` their sum); empty for one piece.
    pub segments: Vec<super::storyboard::Segment>,
    /// Whether a storyboard's joins get the colour correction.
    pub color_match: bool,
}

impl Params {
    /// The cache key of this generation on a model: a hash of the canonical parameters, the weights and the
    /// engine version. Scheduling fields (priority, deadline, idempotency key, previews) are not part of it,
    /// since they do not change the video.
    pub fn cache_key(&self, model: &ModelInfo) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        crate::runtime::VERSION.hash(&mut h);
        model.name.hash(&mut h);
        model.weights_hash.hash(&mut h);
        self.prompt.hash(&mut h);
        self.negative_prompt.hash(&mut h);
        (self.width, self.height, self.num_frames, self.steps, self.seed).hash(&mut h);
        self.fps.to_bits().hash(&mut h);
        self.guidance_scale.to_bits().hash(&mut h);
        self.guidance_scale_2.map(f64::to_bits).hash(&mut h);
        self.image.as_ref().map(|i| i.hash).hash(&mut h);
        self.last_image.as_ref().map(|i| i.hash).hash(&mut h);
        self.vae_tiling.hash(&mut h);
        (self.sampler.kind, self.sampler.flow_shift.map(f64::to_bits), &self.sampler.timesteps).hash(&mut h);
        self.step_cache.map(f64::to_bits).hash(&mut h);
        for l in &self.loras {
            (&l.path, l.scale.to_bits(), &l.hash, l.expert).hash(&mut h);
        }
        if !self.segments.is_empty() {
            (&self.segments, self.color_match).hash(&mut h);
        }
        h.finish()
    }
}

/// A LoRA adapter a request names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraRef {
    /// A safetensors file.
    pub path: Option<String>,
    /// Or a name: `loras/{name}.safetensors` in one of the models folders (`vgen models` lists them).
    pub name: Option<String>,
    #[serde(default = "one")]
    pub scale: f64,
    /// For a two-expert model (Wan2.2 A14B): the one expert the adapter is for; left out, it applies to both.
    /// (diffusers' `load_lora_weights` loads into the high-noise expert, or with `load_into_transformer_2` the
    /// low-noise one: `"high"` and `"low"` are those.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expert: Option<Expert>,
}

/// One of a two-expert model's transformers: `high` (`transformer`, the high-noise steps) or `low`
/// (`transformer_2`, the steps below the boundary).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expert {
    High,
    Low,
}

impl Expert {
    /// 0 for `transformer`, 1 for `transformer_2`.
    pub fn index(self) -> usize {
        match self {
            Expert::High => 0,
            Expert::Low => 1,
        }
    }
}

fn one() -> f64 {
    1.0
}

/// A LoRA adapter as a job applies it: the file, its scale, and a hash of the file for the cache key.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Lora {
    pub path: std::path::PathBuf,
    pub scale: f64,
    pub hash: String,
    /// The one expert it applies to (None: every transformer).
    pub expert: Option<Expert>,
}

/// The file a request's adapter names, found and hashed; every problem names the adapter.
fn resolve_lora(index: usize, r: &LoraRef, limits: &Limits, model: &ModelInfo) -> Result<Lora> {
    let field = format!("loras[{index}]");
    if let Some(expert) = r.expert
        && model.defaults.guidance_scale_2.is_none()
    {
        return Err(Error::invalid(format!(
            "{field}.expert: {} has one transformer; \"{}\" is for a model with two experts (Wan2.2 A14B)",
            model.name,
            if expert == Expert::High { "high" } else { "low" }
        )));
    }
    if !(r.scale.is_finite() && r.scale.abs() <= limits.max_lora_scale) {
        return Err(Error::invalid(format!(
            "{field}: scale {} is outside -{max}..={max} (limits.max_lora_scale)",
            r.scale,
            max = limits.max_lora_scale
        )));
    }
    let path = match (&r.path, &r.name) {
        (Some(p), None) => std::path::PathBuf::from(p),
        (None, Some(name)) => {
            let plain = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && !name.starts_with('.');
            if !plain {
                return Err(Error::invalid(format!("{field}: name {name:?} is not a plain file name")));
            }
            let roots = crate::models::SearchPath::standard();
            roots
                .roots()
                .iter()
                .map(|root| root.path.join("loras").join(format!("{name}.safetensors")))
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "{field}: no adapter {name:?}: looked for loras/{name}.safetensors in {}",
                        roots.describe()
                    ))
                })?
        }
        _ => return Err(Error::invalid(format!("{field}: give a path or a name, one of them"))),
    };
    if !path.is_file() {
        return Err(Error::invalid(format!("{field}: {}: no such file", path.display())));
    }
    let hash = crate::models::weights::fingerprint(std::slice::from_ref(&path))
        .map_err(|e| Error::invalid(format!("{field}: {}: {}", path.display(), e.message())))?;
    Ok(Lora { path, scale: r.scale, hash, expert: r.expert })
}

/// The rule a model's frame count follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum FrameRule {
    /// Any count from 1.
    Any,
    /// `1 + 4k`: the Wan VAE compresses time 4× after the first frame.
    OnePlusFourK,
}

impl FrameRule {
    pub fn accepts(self, n: u32) -> bool {
        n >= 1 && (self == FrameRule::Any || (n - 1) % 4 == 0)
    }
}

/// Checks a request against the limits and the model, and resolves its defaults.
pub fn validate(
    request: &Request,
    model: &ModelInfo,
    limits: &Limits,
    draw_seed: impl FnOnce() -> u64,
) -> Result<Params> {
    let d = &model.defaults;
    let segments = super::storyboard::plan(request, model, limits)?.unwrap_or_default();
    // A storyboard's first prompt stands for it; a single segment is a plain request for its prompt.
    let (prompt, requested_frames) = match (segments.first(), request.segments.first()) {
        (Some(first), _) => (first.prompt.as_str(), Some(segments.iter().map(|s| s.frames).sum())),
        (None, Some(one)) => (one.prompt.trim(), one.num_frames.or(request.num_frames)),
        (None, None) => (request.prompt.trim(), request.num_frames),
    };
    if prompt.is_empty() {
        return Err(Error::invalid("prompt is empty: describe the video to make"));
    }
    let chars = prompt.chars().count();
    if chars > limits.max_prompt_chars {
        return Err(Error::invalid(format!("prompt has {chars} characters; the limit is {}", limits.max_prompt_chars)));
    }
    let m = model.size_multiple.max(1);
    let side = |name: &str, v: u32, max: u32| -> Result<u32> {
        if v == 0 || v % m != 0 {
            let lo = (v / m).max(1) * m;
            let hi = lo + m;
            let hint = if v % m == 0 { format!("{m}") } else { format!("{lo} or {hi}") };
            return Err(Error::invalid(format!("{name} {v} is not a positive multiple of {m}: use {hint}")));
        }
        if v > max {
            return Err(Error::invalid(format!("{name} {v} is above the limit of {max}")));
        }
        Ok(v)
    };
    let width = side("width", request.width.unwrap_or(d.width), limits.max_width)?;
    let height = side("height", request.height.unwrap_or(d.height), limits.max_height)?;
    let num_frames = requested_frames.unwrap_or(d.num_frames);
    if segments.is_empty() && !model.frame_rule.accepts(num_frames) {
        let lo = ((num_frames.max(1) - 1) / 4) * 4 + 1;
        return Err(Error::invalid(format!(
            "num_frames {num_frames} is not of the form 1+4k that {} needs: use {lo} or {}",
            model.name,
            lo + 4
        )));
    }
    if num_frames > limits.max_frames {
        return Err(Error::invalid(format!("num_frames {num_frames} is above the limit of {}", limits.max_frames)));
    }
    let sampler = match (&request.sampler, &d.sampler) {
        (Some(_), None) => {
            return Err(Error::invalid(format!("sampler: {} has no configurable sampler", model.name)));
        }
        (Some(asked), Some(own)) => {
            asked.check("sampler")?;
            asked.over(own)
        }
        (None, own) => own.clone().unwrap_or_default(),
    };
    let step_cache = match &request.step_cache {
        None | Some(StepCacheRequest::On(false)) => None,
        Some(_) if d.sampler.is_none() => {
            return Err(Error::invalid(format!("step_cache: {} has no transformer steps to cache", model.name)));
        }
        Some(StepCacheRequest::On(true)) => Some(crate::models::step_cache::DEFAULT_THRESHOLD),
        Some(StepCacheRequest::Threshold { threshold }) => {
            if !(threshold.is_finite() && *threshold > 0.0 && *threshold <= 10.0) {
                return Err(Error::invalid(format!("step_cache.threshold {threshold} is outside (0, 10]")));
            }
            Some(*threshold)
        }
    };
    let steps = match (&sampler.timesteps, request.steps) {
        (Some(t), Some(steps)) if steps as usize != t.len() => {
            return Err(Error::invalid(format!(
                "steps {steps} disagrees with the sampler's {} timesteps: leave steps out, or give as many",
                t.len()
            )));
        }
        (Some(t), _) => t.len() as u32,
        (None, steps) => steps.unwrap_or(d.steps),
    };
    if steps == 0 || steps > limits.max_steps {
        return Err(Error::invalid(format!("steps {steps} is outside 1..={}", limits.max_steps)));
    }
    let fps = request.fps.unwrap_or(d.fps);
    if !(fps.is_finite() && fps > 0.0 && fps <= limits.max_fps) {
        return Err(Error::invalid(format!("fps {fps} is outside (0, {}]", limits.max_fps)));
    }
    let guidance_scale = request.guidance_scale.unwrap_or(d.guidance_scale);
    if !(guidance_scale.is_finite() && (0.0..=limits.max_guidance_scale).contains(&guidance_scale)) {
        return Err(Error::invalid(format!(
            "guidance_scale {guidance_scale} is outside [0, {}]",
            limits.max_guidance_scale
        )));
    }
    let guidance_scale_2 = match (request.guidance_scale_2, d.guidance_scale_2) {
        (Some(g), Some(_)) if !(g.is_finite() && (0.0..=limits.max_guidance_scale).contains(&g)) => {
            return Err(Error::invalid(format!("guidance_scale_2 {g} is outside [0, {}]", limits.max_guidance_scale)));
        }
        (Some(_), None) => {
            return Err(Error::invalid(format!(
                "guidance_scale_2: {} has one transformer; the second scale is for a model with a low-noise expert \
                 (Wan2.2 A14B)",
                model.name
            )));
        }
        (given, default) => given.or(default),
    };
    if request.priority.abs() > limits.max_priority {
        return Err(Error::invalid(format!(
            "priority {} is outside -{max}..={max}",
            request.priority,
            max = limits.max_priority
        )));
    }
    if request.deadline_ms == Some(0) {
        return Err(Error::invalid("deadline_ms must be positive (milliseconds from submit)"));
    }
    if request.preview_every == Some(0) {
        return Err(Error::invalid("preview_every must be at least 1 step"));
    }
    check_outputs(request)?;
    check_metadata(request)?;
    if !request.loras.is_empty() && !model.takes_loras {
        return Err(Error::invalid(format!("loras: {} takes no LoRA adapters", model.name)));
    }
    let loras =
        request.loras.iter().enumerate().map(|(i, r)| resolve_lora(i, r, limits, model)).collect::<Result<Vec<_>>>()?;
    let images = |field: &str, input: &Option<ImageInput>, takes: bool, what: &str| -> Result<Option<Arc<Image>>> {
        let Some(input) = input else { return Ok(None) };
        if !takes {
            return Err(Error::invalid(format!("{field}: {} {what}", model.name)));
        }
        Ok(Some(Arc::new(image::load(input, field, limits.max_image_pixels, width, height)?)))
    };
    if request.last_image.is_some() && request.image.is_none() {
        return Err(Error::invalid("last_image needs image: a first–last frame video starts from image"));
    }
    if model.conditioning.needs_image && request.image.is_none() {
        return Err(Error::invalid(format!("image: {} animates an image; give one (image-to-video)", model.name)));
    }
    if model.conditioning.needs_last_image && request.last_image.is_none() {
        return Err(Error::invalid(format!(
            "last_image: {} makes a video between a first and a last frame; give both",
            model.name
        )));
    }
    let first =
        images("image", &request.image, model.conditioning.image, "makes video from text only: it takes no image")?;
    let last = images(
        "last_image",
        &request.last_image,
        model.conditioning.last_image,
        "takes no last frame (first–last frame)",
    )?;
    if let Some(key) = &request.idempotency_key {
        if key.is_empty() || key.len() > 256 {
            return Err(Error::invalid("idempotency_key must have 1 to 256 bytes"));
        }
    }
    Ok(Params {
        prompt: prompt.to_string(),
        negative_prompt: request.negative_prompt.clone().unwrap_or_default(),
        width,
        height,
        num_frames,
        fps,
        steps,
        guidance_scale,
        guidance_scale_2,
        seed: request.seed.unwrap_or_else(draw_seed),
        preview_every: request.preview_every,
        sampler,
        step_cache,
        vae_tiling: request.vae_tiling,
        loras,
        image: first,
        last_image: last,
        segments,
        color_match: request.color_match.unwrap_or(true),
    })
}

fn check_metadata(request: &Request) -> Result<()> {
    if request.metadata.len() > 16 {
        return Err(Error::invalid(format!("{} metadata entries; at most 16", request.metadata.len())));
    }
    for (key, value) in &request.metadata {
        if key.is_empty() || key.len() > 64 {
            return Err(Error::invalid(format!("metadata key {key:?} must have 1 to 64 bytes")));
        }
        if value.len() > 512 {
            return Err(Error::invalid(format!("metadata[{key:?}] has {} bytes; at most 512", value.len())));
        }
    }
    Ok(())
}

/// The output files: a known format each, no path twice, a folder that exists and can be written, and somewhere
/// for the video to go.
fn check_outputs(request: &Request) -> Result<()> {
    if request.keep_frames == Some(false) && request.outputs.is_empty() {
        return Err(Error::invalid("keep_frames is false but outputs is empty: the video would go nowhere"));
    }
    if request.outputs.len() > 16 {
        return Err(Error::invalid(format!("{} outputs; a job writes at most 16 files", request.outputs.len())));
    }
    let mut seen = std::collections::HashSet::new();
    for out in &request.outputs {
        if out.is_empty() {
            return Err(Error::invalid("an output path is empty"));
        }
        let path = std::path::Path::new(out);
        if !seen.insert(path.to_string_lossy().trim_end_matches('/').to_string()) {
            return Err(Error::invalid(format!("output {out:?} is named twice")));
        }
        crate::encode::check_writable(path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{Defaults, ModelInfo};

    fn info() -> ModelInfo {
        ModelInfo {
            name: "m".into(),
            weights_hash: "w".into(),
            defaults: Defaults {
                width: 64,
                height: 64,
                num_frames: 17,
                fps: 8.0,
                steps: 10,
                guidance_scale: 4.0,
                guidance_scale_2: None,
                sampler: None,
            },
            size_multiple: 16,
            frame_rule: FrameRule::OnePlusFourK,
            dtype: "f32".into(),
            conditioning: Default::default(),
            takes_loras: false,
        }
    }

    fn check(r: Request) -> Result<Params> {
        validate(&r, &info(), &Limits::default(), || 7)
    }

    #[test]
    fn defaults_fill_what_the_request_leaves_out() {
        let p = check(Request::new("  a red circle ")).unwrap();
        assert_eq!((p.width, p.height, p.num_frames, p.steps, p.seed), (64, 64, 17, 10, 7));
        assert_eq!(p.prompt, "a red circle");
    }

    #[test]
    fn bad_values_are_rejected_with_the_fix() {
        let e = check(Request { width: Some(100), ..Request::new("x") }).unwrap_err();
        assert!(e.message().contains("96 or 112"), "{e}");
        let e = check(Request { num_frames: Some(18), ..Request::new("x") }).unwrap_err();
        assert!(e.message().contains("17 or 21"), "{e}");
        for r in [
            Request::new(""),
            Request { steps: Some(0), ..Request::new("x") },
            Request { steps: Some(201), ..Request::new("x") },
            Request { height: Some(4096), ..Request::new("x") },
            Request { guidance_scale: Some(f64::NAN), ..Request::new("x") },
            Request { fps: Some(-1.0), ..Request::new("x") },
            Request { priority: 1000, ..Request::new("x") },
            Request { deadline_ms: Some(0), ..Request::new("x") },
            Request { preview_every: Some(0), ..Request::new("x") },
            Request { num_frames: Some(1001), ..Request::new("x") },
        ] {
            let e = check(r.clone()).unwrap_err();
            assert_eq!(e.code(), crate::ErrorCode::InvalidArgument, "{r:?}");
        }
    }

    #[test]
    fn json_rejects_unknown_fields_and_wrong_types() {
        let e = Request::from_json(r#"{"prompt":"x","stepz":3}"#).unwrap_err();
        assert!(e.message().contains("stepz"), "{e}");
        let e = Request::from_json(r#"{"prompt":"x","steps":-3}"#).unwrap_err();
        assert!(e.message().contains("field `steps`"), "wrong types name their field: {e}");
        let e = Request::from_json(r#"{"prompt":"x","outputs":["a", 5]}"#).unwrap_err();
        assert!(e.message().contains("field `outputs[1]`"), "{e}");
        let r = Request::from_json(r#"{"prompt":"x","steps":3,"priority":2}"#).unwrap();
        assert_eq!((r.steps, r.priority), (Some(3), 2));
    }

    #[test]
    fn cache_key_ignores_scheduling_but_not_content() {
        let a = check(Request { priority: 5, ..Request::new("x") }).unwrap();
        let b = check(Request { deadline_ms: Some(9), ..Request::new("x") }).unwrap();
        let c = check(Request { seed: Some(8), ..Request::new("x") }).unwrap();
        assert_eq!(a.cache_key(&info()), b.cache_key(&info()));
        assert_ne!(a.cache_key(&info()), c.cache_key(&info()));
    }
}
