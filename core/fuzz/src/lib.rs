//! The bodies of vgen's fuzz targets. Each takes arbitrary bytes and must neither panic nor crash; where the input
//! is accepted, it also checks a property (a request survives a JSON round trip; a tokenized prompt has the
//! configured length). `fuzz_targets/` wraps each for libFuzzer (`make fuzz`); `tests/corpus.rs` runs each over
//! its committed corpus and a few seconds of mutations in `cargo test`.
//!
//! Only misuse that the API's contract allows is generated: NULLs, bad strings, unknown ids, any order of calls.
//! Freeing a handle twice is undefined behaviour by contract and is never generated.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use vgen_core::engine::{EngineConfig, FrameRule, Limits, Request, validate_request};
use vgen_core::models::{Defaults, ModelInfo, Models, wan::pipeline::WanModel, wan::tokenizer};

/// The folder of the Wan test fixtures.
fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/wan")
}

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// A request parsed and validated against a model like the default one; an accepted request must serialise and
/// parse back to itself (numbers included: serde_json's `float_roundtrip` reads them exactly), and give the same
/// cache key.
pub fn request_json(data: &[u8]) {
    let Some(s) = text(data) else { return };
    let Ok(request) = Request::from_json(s) else { return };
    let again = Request::from_json(&serde_json::to_string(&request).expect("a request serialises"))
        .expect("a serialised request parses");
    assert_eq!(again, request, "JSON round trip");
    let info = default_like();
    if let Ok(params) = validate_request(&request, &info, &Limits::default(), || 1) {
        let twice = validate_request(&again, &info, &Limits::default(), || 1).expect("the same request validates");
        assert_eq!(params.cache_key(&info), twice.cache_key(&info));
    }
}

/// A model like the default one: 64×64, 17 frames of 1 + 4k, 8 steps, a configurable sampler.
fn default_like() -> ModelInfo {
    ModelInfo {
        name: "fuzz".into(),
        weights_hash: "0".into(),
        defaults: Defaults {
            width: 64,
            height: 64,
            num_frames: 17,
            fps: 8.0,
            steps: 8,
            guidance_scale: 4.0,
            guidance_scale_2: None,
            sampler: Some(Default::default()),
        },
        size_multiple: 16,
        frame_rule: FrameRule::OnePlusFourK,
        dtype: "f32".into(),
        conditioning: Default::default(),
        takes_loras: false,
    }
}

/// A storyboard: the request's `segments` (or one long prompt) planned against a model like the default one that
/// continues from a frame. An accepted storyboard's parts tile the video exactly: they start at 0 and each where
/// the one before ends, add up to `num_frames` within the limit, follow the frame rule (the first part 1 + 4k, a
/// later one 4k after its given frame), carry trimmed non-empty prompts, and the first's prompt is the request's.
/// The input's bytes also go through the drift measures and the join's colour correction as pixels: every measure
/// finite, identity within [0, 1], a corrected frame the same size.
pub fn segments(data: &[u8]) {
    if let Some(s) = text(data)
        && let Ok(request) = Request::from_json(s)
    {
        storyboard(&request);
    }
    drift(data);
}

fn storyboard(request: &Request) {
    let mut info = default_like();
    info.conditioning.image = true;
    let limits = Limits::default();
    let Ok(params) = validate_request(request, &info, &limits, || 1) else { return };
    let again = Request::from_json(&serde_json::to_string(request).expect("a request serialises")).expect("parses");
    let twice = validate_request(&again, &info, &limits, || 1).expect("the same request validates");
    assert_eq!(params.cache_key(&info), twice.cache_key(&info));
    if params.segments.is_empty() {
        assert!(FrameRule::OnePlusFourK.accepts(params.num_frames), "{} frames in one piece", params.num_frames);
        return;
    }
    let mut start = 0;
    for (i, part) in params.segments.iter().enumerate() {
        assert_eq!(part.start_frame, start, "part {i} starts where the one before ends");
        let generated = if i == 0 { part.frames } else { part.frames + 1 };
        assert!(part.frames > 0 && FrameRule::OnePlusFourK.accepts(generated), "part {i}: {} frames", part.frames);
        assert!(!part.prompt.is_empty() && part.prompt.trim() == part.prompt, "part {i}: {:?}", part.prompt);
        start += part.frames;
    }
    assert_eq!(start, params.num_frames, "the parts add up to the video");
    assert!(params.num_frames <= limits.max_frames);
    assert!(params.segments.len() > 1, "one part is a plain request");
    assert_eq!(params.prompt, params.segments[0].prompt);
}

fn drift(data: &[u8]) {
    use vgen_core::engine::drift::{ColorMatch, Statistics};
    use vgen_core::video::Frames;
    let Some((&side, pixels)) = data.split_first() else { return };
    let side = (side % 12) as usize + 1;
    let frame = side * side * 3;
    let count = (pixels.len() / frame).min(8);
    if count == 0 {
        return;
    }
    let frames = Frames::new(count, side, side, pixels[..count * frame].to_vec()).expect("sized above");
    let mut first = Statistics::default();
    first.add(&Frames::new(1, side, side, pixels[..frame].to_vec()).expect("sized above"));
    let mut all = Statistics::default();
    all.add(&frames);
    let d = all.drift_from(&first);
    assert!(d.color_delta_e.is_finite() && d.color_delta_e >= 0.0, "{d:?}");
    assert!(d.sharpness_ratio.is_finite() && d.sharpness_ratio >= 0.0, "{d:?}");
    assert!((0.0..=1.0 + 1e-9).contains(&d.identity), "{d:?}");
    let fix = ColorMatch::fit(frames.frame(0), frames.frame(count - 1));
    assert!(fix.gain.iter().chain(&fix.offset).all(|v| v.is_finite()), "{fix:?}");
    let fixed = fix.apply(&frames).expect("the same size");
    assert_eq!(fixed.data().len(), frames.data().len());
}

/// An engine configuration parsed and, when accepted, started with the built-in models and shut down.
pub fn config_json(data: &[u8]) {
    let Some(s) = text(data) else { return };
    let Ok(mut config) = EngineConfig::from_json(s) else { return };
    // A disk cache would write wherever the input says; the folder is the host's to choose, not under test here.
    config.cache.disk_dir = None;
    config.shutdown_timeout_ms = config.shutdown_timeout_ms.min(100);
    // Likewise the Redis backend: its settings are checked as given, but it connects nowhere (a closed local
    // port) and keeps results in a scratch folder.
    if let vgen_core::engine::Backend::Redis(redis) = &mut config.backend {
        let scheme = redis.url.split("://").next().unwrap_or("").to_ascii_lowercase();
        if ["redis", "rediss", "valkey", "valkeys", "redis+unix", "valkey+unix", "unix"].contains(&scheme.as_str()) {
            redis.url = "redis://127.0.0.1:1/0".into();
        }
        redis.results_dir = std::env::temp_dir().join("vgen-fuzz-results");
        redis.timeout_ms = redis.timeout_ms.min(100);
    }
    if let Ok(engine) = vgen_core::Engine::with_models(config, Models::builtin()) {
        engine.shutdown(std::time::Duration::from_millis(100));
    }
}

/// Any text through prompt cleaning and both fixture tokenizers: ids and mask always have the configured length.
pub fn tokenizer(data: &[u8]) {
    static TOKENIZERS: OnceLock<Vec<tokenizer::WanTokenizer>> = OnceLock::new();
    let tokenizers = TOKENIZERS.get_or_init(|| {
        ["tiny-wan/tokenizer", "tokenizer-wordlevel"]
            .iter()
            .map(|f| tokenizer::WanTokenizer::from_folder(&fixtures().join(f), 16).expect("the fixture tokenizer"))
            .collect()
    });
    let Some(s) = text(data) else { return };
    let cleaned = tokenizer::prompt_clean(s);
    for t in tokenizers {
        let (ids, mask) = t.encode(&[s, &cleaned]).expect("any text tokenizes");
        assert_eq!(ids.size(), [2, t.max_len() as i64]);
        assert_eq!(mask.size(), [2, t.max_len() as i64]);
        let _ = t.unknown_words(s);
    }
}

/// The files of a model folder the fuzzer may replace: the first input byte picks one, the rest is its content.
const MODEL_FILES: [&str; 9] = [
    "model_index.json",
    "vgen.json",
    "transformer/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "scheduler/scheduler_config.json",
    "transformer/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
    "tokenizer/tokenizer.json",
];

/// Under libFuzzer, lets through panics raised inside the `tokenizers` crate, which vgen catches and turns into an
/// error naming the file (the crate panics on some malformed `tokenizer.json` files instead of returning an error;
/// see `WanTokenizer::from_folder`). libfuzzer-sys's hook aborts on every panic, caught or not, so without this a
/// caught one reads as a crash. Every other panic still aborts, and one from `tokenizers` that vgen failed to
/// catch still unwinds out of the target, where libfuzzer-sys aborts too. Call it from a target's `init`.
pub fn tolerate_caught_tokenizers_panics() {
    let abort = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let from_tokenizers = info.location().is_some_and(|l| l.file().contains("/tokenizers-"));
        if !from_tokenizers {
            abort(info);
        }
    }));
}

/// A copy of the tiny Wan model with one file replaced by the input, opened and loaded: every defect must be an
/// error, never a panic, an abort or an allocation the files do not justify.
pub fn model_folder(data: &[u8]) {
    static FOLDER: OnceLock<PathBuf> = OnceLock::new();
    let folder = FOLDER.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vgen-fuzz-model-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        copy_dir(&fixtures().join("tiny-wan"), &dir);
        std::fs::write(dir.join("vgen.json"), r#"{"max_sequence_length": 16}"#).unwrap();
        dir
    });
    let Some((&pick, content)) = data.split_first() else { return };
    let file = folder.join(MODEL_FILES[pick as usize % MODEL_FILES.len()]);
    let original = std::fs::read(&file).unwrap();
    std::fs::write(&file, content).unwrap();
    if let Ok(model) = WanModel::open(folder) {
        let _ = model.components(vgen_core::Device::Cpu);
    }
    std::fs::write(&file, original).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

pub mod c_api;

/// PNG or JPEG bytes as a request's image gives them: decoded under a pixel limit, then stretched to 32×32. An
/// accepted image has three bytes a pixel, and so has its resize.
pub fn image_bytes(data: &[u8]) {
    use vgen_core::engine::image::{decode_encoded, resize};
    let Ok(image) = decode_encoded(data, "image", 1 << 20) else { return };
    assert_eq!(image.rgb.len(), image.width as usize * image.height as usize * 3, "three bytes a pixel");
    let small = resize(image, 32, 32);
    assert_eq!(small.rgb.len(), 32 * 32 * 3);
}

/// A GGUF file's header and tensor table (`vgen_core::models::weights::gguf`). An accepted file's tensors lie
/// inside it and decode to as many values as their shapes say; written back by vgen's writer and read again, it
/// gives the same metadata and tensors (ComfyUI-GGUF's `orig_shape` entries aside, which only reshape).
pub fn gguf(data: &[u8]) {
    use vgen_core::models::weights::gguf::{Gguf, TensorOut, write};
    let Ok(file) = Gguf::parse(data) else { return };
    let comfy = |k: &str| k.starts_with("comfy.gguf.orig_shape.");
    for t in &file.tensors {
        assert!(t.start + t.len <= data.len(), "tensor {:?} lies inside the file", t.name);
        let elements: i64 = t.shape.iter().product();
        assert_eq!(elements / t.ggml.block_elements() * t.ggml.block_bytes(), t.len as i64, "{:?}'s size", t.name);
        if t.len <= 1 << 16 && !file.metadata.contains_key(&format!("comfy.gguf.orig_shape.{}", t.name)) {
            let raw = tch::Tensor::from_slice(&data[t.start..t.start + t.len]);
            let values = t.ggml.dequantize(&raw, &t.shape).expect("an accepted tensor decodes");
            assert_eq!(values.size(), t.shape, "decoded shape");
        }
    }
    static SCRATCH: OnceLock<PathBuf> = OnceLock::new();
    let path = SCRATCH.get_or_init(|| std::env::temp_dir().join(format!("vgen-fuzz-{}.gguf", std::process::id())));
    let kept: Vec<_> = file
        .tensors
        .iter()
        .filter(|t| !file.metadata.contains_key(&format!("comfy.gguf.orig_shape.{}", t.name)))
        .collect();
    let metadata: Vec<(String, _)> =
        file.metadata.iter().filter(|(k, _)| !comfy(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
    let outs: Vec<TensorOut<'_>> = kept
        .iter()
        .map(|t| TensorOut { name: &t.name, shape: &t.shape, ggml: t.ggml, bytes: &data[t.start..t.start + t.len] })
        .collect();
    write(path, &metadata, &outs).expect("an accepted file can be written back");
    let again = Gguf::parse(&std::fs::read(path).unwrap()).expect("a written file parses");
    let written = std::fs::read(path).unwrap();
    assert_eq!(again.metadata.iter().filter(|(k, _)| !comfy(k)).count(), metadata.len());
    for (k, v) in &metadata {
        let back = again.metadata.get(k).expect("every key comes back");
        assert!(same_value(back, v), "metadata {k:?} round trip: {back:?} != {v:?}");
    }
    assert_eq!(again.tensors.len(), kept.len());
    for (a, b) in again.tensors.iter().zip(&kept) {
        assert_eq!((&a.name, &a.shape, a.ggml), (&b.name, &b.shape, b.ggml), "tensor round trip");
        assert_eq!(&written[a.start..a.start + a.len], &data[b.start..b.start + b.len], "{:?}'s bytes", a.name);
    }
}

/// Equality of metadata values with floats compared by their bits (a NaN round-trips as itself).
fn same_value(a: &vgen_core::models::weights::gguf::Value, b: &vgen_core::models::weights::gguf::Value) -> bool {
    use vgen_core::models::weights::gguf::Value;
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_value(p, q)),
        _ => a == b,
    }
}

/// A LoRA file (`vgen_core::models::lora`): the bytes as a safetensors file, normalised from whichever key form it
/// uses, then checked against the tiny Wan's layers (the transformer's and the text encoder's). An accepted
/// adapter's every layer is one the model has, of its shape, and applying it, unmerged or merged, changes nothing
/// about the outputs' shapes; anything else is refused with `invalid_argument`, never a panic.
pub fn lora(data: &[u8]) {
    use std::sync::Arc;
    use tch::{Device, Kind, Tensor};
    use vgen_core::models::lora::{Adapter, active, merged::MergedSet};
    use vgen_core::models::wan::transformer::WanTransformer;
    use vgen_core::models::wan::umt5::Umt5Encoder;
    struct Model {
        _vars: Vec<tch::nn::VarStore>,
        transformer: WanTransformer,
        encoder: Umt5Encoder,
    }
    // SAFETY: the fuzz target runs on one thread; the model is only read.
    unsafe impl Sync for Model {}
    unsafe impl Send for Model {}
    static MODEL: OnceLock<Model> = OnceLock::new();
    static SCRATCH: OnceLock<PathBuf> = OnceLock::new();
    let model = MODEL.get_or_init(|| {
        let dir = fixtures().join("tiny-wan/transformer");
        let config = vgen_core::models::weights::read_config(&dir).unwrap();
        let (vs, m) = vgen_core::models::wan::load_transformer(&dir, Device::Cpu, config).unwrap();
        let dir = fixtures().join("tiny-wan/text_encoder");
        let config = vgen_core::models::weights::read_config(&dir).unwrap();
        let (ve, encoder) =
            vgen_core::models::wan::load_component(&dir, "model", Device::Cpu, &[], &["encoder.embed_tokens."], |p| {
                Umt5Encoder::new(p, config)
            })
            .unwrap();
        Model { _vars: vec![vs, ve], transformer: m, encoder }
    });
    let path =
        SCRATCH.get_or_init(|| std::env::temp_dir().join(format!("vgen-fuzz-lora-{}.safetensors", std::process::id())));
    std::fs::write(path, data).unwrap();
    let adapter = match Adapter::open(path, Device::Cpu, Kind::Float) {
        Ok(a) => a,
        Err(e) => {
            assert_eq!(e.code(), vgen_core::ErrorCode::InvalidArgument, "{e}");
            return;
        }
    };
    let mut linears = model.transformer.linears();
    linears.extend(model.encoder.linears());
    if let Err(e) = adapter.check(&linears) {
        assert_eq!(e.code(), vgen_core::ErrorCode::InvalidArgument, "{e}");
        return;
    }
    for name in adapter.layers.keys() {
        assert!(linears.contains_key(name), "an accepted layer {name:?} is the model's");
    }
    let x = Tensor::zeros([1, 16, 1, 2, 2], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[500.0f32]);
    let text = Tensor::zeros([1, 4, 32], (Kind::Float, Device::Cpu));
    let ids = Tensor::zeros([1, 4], (Kind::Int64, Device::Cpu));
    let adapter = Arc::new(adapter);
    for merged in [false, true] {
        let applied = active::Applied { adapter: adapter.clone(), scale: 0.5, expert: None };
        let _scope = active::scoped_for_experts(vec![applied], merged.then(|| Arc::new(MergedSet::new(0))));
        let out = tch::no_grad(|| model.transformer.forward(&x, &t, &text, None)).expect("an accepted adapter runs");
        assert_eq!(out.size(), x.size());
        let hidden = tch::no_grad(|| model.encoder.forward(&ids, &ids.ones_like()));
        assert_eq!(hidden.size(), [1, 4, 32]);
    }
}

/// The HTTP server's request bodies, driven through its router in-process (no socket): the native
/// `POST /generate` JSON, the OpenAI `POST /v1/videos` multipart form and Google's Vertex `predictLongRunning`
/// JSON. The first byte picks the door; the rest is the body (for the form, after a fixed boundary header).
/// Whatever the bytes, the answer is a response, never a panic, and never a 500: a bad body is a 4xx whose JSON
/// names an error code; a good one is queued on the test card (202 or 200), or turned away for load (429, 503).
pub fn server_bodies(data: &[u8]) {
    use tower::ServiceExt;
    let Some((&door, body)) = data.split_first() else { return };
    let (path, content_type) = match door % 3 {
        0 => ("/generate", "application/json".to_string()),
        1 => ("/v1/videos", format!("multipart/form-data; boundary={SERVER_BOUNDARY}")),
        _ => ("/v1beta1/publishers/google/models/testcard:predictLongRunning", "application/json".to_string()),
    };
    let (runtime, router, engine) = server();
    let request = axum::http::Request::post(path)
        .header("authorization", "Bearer fuzz")
        .header("content-type", content_type)
        .body(axum::body::Body::from(body.to_vec()))
        .expect("a well-formed request");
    let response = runtime.block_on(router.clone().oneshot(request)).expect("the router is infallible");
    let status = response.status().as_u16();
    assert!(!(500..503).contains(&status) && status < 504, "{path}: status {status} for {} bytes", body.len());
    let bytes = runtime.block_on(axum::body::to_bytes(response.into_body(), 1 << 20)).expect("a body");
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    if (400..500).contains(&status) {
        assert!(json["error"]["code"].is_string() || json["error"]["status"].is_string(), "{path}: {json}");
    }
    // A job the body made is cancelled at once and the engine left idle: the next input starts from the same
    // state, and no job is running when the process exits.
    for key in ["job_id", "id", "name"] {
        let digits: String = json[key].as_str().unwrap_or("").chars().rev().take_while(char::is_ascii_digit).collect();
        if let Ok(id) = digits.chars().rev().collect::<String>().parse::<u64>() {
            let _ = engine.cancel(vgen_core::JobId(id));
        }
    }
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < until {
        let m = engine.metrics();
        if m.running == 0 && m.queue_depth == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// The multipart boundary of the OpenAI door's seeds.
pub const SERVER_BOUNDARY: &str = "vgenfuzz";

/// One router over one engine (the test models, a scratch results folder), built once per process.
type Server = (tokio::runtime::Runtime, axum::Router, std::sync::Arc<vgen_core::Engine>);

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let results = std::env::temp_dir().join(format!("vgen-fuzz-server-{}", std::process::id()));
        std::fs::create_dir_all(&results).expect("a scratch folder");
        let config = EngineConfig {
            devices: vec![vgen_core::Device::Cpu],
            default_model: Some("testcard".into()),
            queue_capacity: 64,
            ..Default::default()
        };
        let engine = std::sync::Arc::new(vgen_core::Engine::with_models(config, Models::builtin()).expect("an engine"));
        let app = std::sync::Arc::new(vgen_server::routes::App {
            engine: engine.clone(),
            results_dir: std::fs::canonicalize(&results).expect("the scratch folder"),
            public_url: None,
            listen_url: "http://127.0.0.1:1".into(),
            max_body_bytes: 1 << 20,
            max_prompt_chars: 2000,
            due: None,
            destinations: Default::default(),
            events: tokio::sync::broadcast::channel(16).0,
            videos: Default::default(),
        });
        let tokens = vgen_server::auth::Tokens::new(&[vgen_server::config::TokenConfig {
            token: "fuzz".into(),
            scope: "fuzz".into(),
        }]);
        let router = vgen_server::routes::router(app, std::sync::Arc::new(tokens));
        (runtime, router, engine)
    })
}
