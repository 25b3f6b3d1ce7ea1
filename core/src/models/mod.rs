//! Models: what the engine runs.
//!
//! The engine talks to a model through one narrow interface, [`Model`]: describe yourself, estimate your memory,
//! and generate while reporting each stage and step to an [`Attempt`]. Reporting is what lets the engine give
//! progress, an ETA, previews, cancellation and deadlines at step granularity for every model alike.

pub mod expert_swap;
pub mod faulty;
pub mod linear;
pub mod lora;
pub mod noop;
pub mod offload;
pub mod per_device;
pub mod search_path;
pub mod step_cache;
pub mod testcard;
pub mod wan;
pub mod weights;

use crate::device::Device;
use crate::engine::{Attempt, FrameRule, Params};
use crate::error::{Error, ErrorCode, Result};
use crate::video::Video;
pub use search_path::{Origin, SearchPath};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The name of the project's own trained model, the default wherever it is installed.
pub const DEFAULT_TRAINED: &str = "shapes-tiny";

/// The values a request gets for every field it leaves out.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Defaults {
    pub width: u32,
    pub height: u32,
    pub num_frames: u32,
    pub fps: f64,
    pub steps: u32,
    pub guidance_scale: f64,
    /// The low-noise expert's guidance scale, for a model with two (Wan2.2 A14B); `None` for one transformer.
    pub guidance_scale_2: Option<f64>,
    /// The sampler settings a request starts from; `None` for a model whose sampler is not configurable (the test
    /// models), which then refuses a request's `sampler`.
    pub sampler: Option<crate::schedulers::Sampler>,
}

/// What the engine needs to know about a model before running it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ModelInfo {
    pub name: String,
    /// A hash of the weights, part of every cache key, so new weights never serve old videos.
    pub weights_hash: String,
    pub defaults: Defaults,
    /// Width and height must be multiples of this.
    pub size_multiple: u32,
    pub frame_rule: FrameRule,
    /// The dtype the model computes in, for the result's metadata.
    pub dtype: String,
    /// What besides the prompt the model can condition on.
    pub conditioning: Conditioning,
    /// Whether requests may name LoRA adapters for it (`loras`).
    pub takes_loras: bool,
}

/// The images a model can start from, besides the prompt. A request that gives one the model cannot take is refused,
/// and so is one without an image for a model that needs one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Conditioning {
    /// An image to animate: the video's first frame (`image`).
    pub image: bool,
    /// A last frame too (`last_image`, first–last frame models).
    pub last_image: bool,
    /// Only from an image: an image-to-video model that makes nothing useful from text alone.
    pub needs_image: bool,
    /// Only from a first and a last image (Wan2.1 FLF2V, whose image embedding reads both).
    pub needs_last_image: bool,
}

/// A text-to-video model.
///
/// `generate` runs on an inference worker under `no_grad`. It must call [`Attempt::stage`] when it enters a
/// stage and [`Attempt::step`] after each denoising step, and return promptly with the error they return: that is
/// how a job is cancelled or runs out of time. A panic is caught by the worker and becomes a retryable `internal`
/// error on the job; it never kills the worker.
pub trait Model: Send + Sync + 'static {
    fn info(&self) -> &ModelInfo;

    /// The peak bytes of device memory a generation with these parameters needs. The engine rejects at submit a
    /// request that can never fit the device.
    fn memory_estimate(&self, params: &Params, device: Device) -> u64;

    /// How a generation would use `device`'s memory when it has `budget` bytes (unknown: `None`): the estimate,
    /// and what the model chose to fit it (block offload). The engine admits a request on the plan, and a model
    /// that chooses offload for a device keeps that choice when it loads there.
    fn memory_plan(&self, params: &Params, device: Device, _budget: Option<u64>) -> MemoryPlan {
        MemoryPlan { bytes: self.memory_estimate(params, device), offload_blocks: None, expert_swap: false }
    }

    fn generate(&self, params: &Params, attempt: &mut Attempt<'_>) -> Result<Video>;

    /// The size of the model's weight files, in bytes (0 for a model without weights).
    fn weights_bytes(&self) -> u64 {
        0
    }

    /// The folder the model was opened from (none for a built-in model).
    fn folder(&self) -> Option<&std::path::Path> {
        None
    }
}

/// How one generation would use a device's memory (see [`Model::memory_plan`]).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct MemoryPlan {
    /// The estimated peak, in bytes.
    pub bytes: u64,
    /// With block offload: how many of the transformer's blocks are on the device at once, of how many.
    pub offload_blocks: Option<(usize, usize)>,
    /// With expert swap: a two-expert model's idle expert waits in host memory (see `models::expert_swap`).
    pub expert_swap: bool,
}

/// One model as `vgen models`, Python's `vgen.models()` and the C API's `vgen_engine_models` list it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Summary {
    pub name: String,
    /// Whether a request that names no model gets this one.
    pub default: bool,
    /// One of the built-in models for tests (`testcard`, `noop`, `faulty`): never a default by itself.
    pub test_model: bool,
    /// The folder it was opened from; None for a built-in model.
    pub folder: Option<String>,
    pub weights_bytes: u64,
    /// What a request gets for each field it leaves out (`width`, `height`, `num_frames`, `fps`, `steps`,
    /// `guidance_scale`, listed beside the other fields).
    #[serde(flatten)]
    pub defaults: Defaults,
    pub size_multiple: u32,
    pub dtype: String,
    /// What besides the prompt it can start from: `{"image": true, "last_image": false}` for image-to-video.
    pub conditioning: Conditioning,
}

/// The models an engine can run, by name, and which one is the default.
///
/// Invariant: the default is never a test model (`testcard`, `noop`, `faulty`). It is `shapes-tiny` when found,
/// else the first real model found on the search path, else the one a host set with [`Models::set_default`];
/// with none, a request that names no model fails with `not_found`, saying where vgen looked.
#[derive(Clone, Default)]
pub struct Models {
    by_name: BTreeMap<String, Arc<dyn Model>>,
    default: Option<String>,
    /// Where the model folders were looked for, for the error a request without a model gets when none was found.
    searched: SearchPath,
}

/// The built-in models that exist for tests: never a default.
pub const TEST_MODELS: [&str; 3] = [testcard::NAME, noop::NAME, faulty::NAME];

impl Models {
    /// The models every engine has, none of them a default: the test card (`testcard`), `noop`, which does no work
    /// (for measuring the engine itself), and `faulty`, the test card failing on command (`!fail=CODE*N`,
    /// `!panic`, `!oom`, `!slow=MS` in the prompt), so that a host can test how it handles failure.
    pub fn builtin() -> Self {
        let mut m = Self::default();
        let card: Arc<dyn Model> = Arc::new(testcard::TestCard::new());
        m.insert(card.clone());
        m.insert(Arc::new(noop::NoOp::new()));
        m.insert(Arc::new(faulty::Faulty::new(card)));
        m
    }

    /// The built-in models plus every Wan folder (one holding `model_index.json`) found on the standard search
    /// path ([`SearchPath::standard`]: `$VGEN_MODELS`, the user's data folder, the Python package's data, the
    /// install prefix, the source tree). Folders that fail to open are reported and skipped.
    pub fn discover() -> (Self, Vec<Error>) {
        Self::discover_on(SearchPath::standard())
    }

    /// The built-in models plus every Wan folder found in exactly these folders.
    pub fn discover_in(roots: &[std::path::PathBuf]) -> (Self, Vec<Error>) {
        Self::discover_on(SearchPath::only(roots.iter().cloned()))
    }

    /// The built-in models plus every Wan folder found on `path`. Where two folders hold a model of the same
    /// name, the one earlier on the path wins. The default is `shapes-tiny` if found, else the first model found
    /// (which `insert` made the default, the built-in ones being test models).
    pub fn discover_on(path: SearchPath) -> (Self, Vec<Error>) {
        let mut m = Self::builtin();
        let mut problems = Vec::new();
        let mut opened = std::collections::HashSet::new();
        for root in path.roots() {
            let Ok(entries) = std::fs::read_dir(&root.path) else { continue };
            let mut dirs: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
            dirs.sort();
            for dir in dirs.into_iter().filter(|d| d.join("model_index.json").is_file()) {
                // The same folder reached twice (a link, or the source tree named in $VGEN_MODELS) opens once.
                if !opened.insert(dir.canonicalize().unwrap_or_else(|_| dir.clone())) {
                    continue;
                }
                match wan::pipeline::WanModel::open(&dir) {
                    Ok(model) => {
                        let name = model.info().name.clone();
                        if !m.by_name.contains_key(&name) {
                            m.insert(Arc::new(model));
                        }
                    }
                    Err(e) => problems.push(e),
                }
            }
        }
        if m.by_name.contains_key(DEFAULT_TRAINED) {
            m.default = Some(DEFAULT_TRAINED.to_string());
        }
        m.searched = path;
        (m, problems)
    }

    /// Opens a model folder given by path, or finds a model by name.
    pub fn resolve(&mut self, name_or_folder: &str) -> Result<String> {
        let path = std::path::Path::new(name_or_folder);
        if path.join("model_index.json").is_file() {
            let model = wan::pipeline::WanModel::open(path)?;
            let name = model.info().name.clone();
            self.insert(Arc::new(model));
            return Ok(name);
        }
        self.get(Some(name_or_folder)).map(|m| m.info().name.clone())
    }

    /// Adds or replaces a model. The first model added that is not a test model becomes the default if there is
    /// none.
    pub fn insert(&mut self, model: Arc<dyn Model>) {
        let name = model.info().name.clone();
        if self.default.is_none() && !TEST_MODELS.contains(&name.as_str()) {
            self.default = Some(name.clone());
        }
        self.by_name.insert(name, model);
    }

    /// Makes the named model the default. A host may choose a test model here (a test does); vgen never does.
    pub fn set_default(&mut self, name: &str) -> Result<()> {
        self.get(Some(name))?;
        self.default = Some(name.to_string());
        Ok(())
    }

    /// The named model, or the default one for `None`.
    pub fn get(&self, name: Option<&str>) -> Result<Arc<dyn Model>> {
        let name = match name.or(self.default.as_deref()) {
            Some(n) => n,
            None => return Err(self.no_default()),
        };
        self.by_name.get(name).cloned().ok_or_else(|| {
            let known: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
            Error::new(ErrorCode::NotFound, format!("unknown model {name:?}; installed: {}", known.join(", ")))
        })
    }

    /// The error of a request that names no model when no real model was found.
    fn no_default(&self) -> Error {
        Error::new(
            ErrorCode::NotFound,
            format!(
                "no model was named and no real model is installed: vgen looked for model folders (each holding \
                 model_index.json, such as {DEFAULT_TRAINED}) in {}. Install the default model with `make install` \
                 from vgen's source tree, copy a model folder into one of those folders or into a folder named by \
                 $VGEN_MODELS, or name a model ({} are test models)",
                self.searched.describe(),
                TEST_MODELS.join(", ")
            ),
        )
    }

    /// Every model, by name.
    pub fn summaries(&self) -> Vec<Summary> {
        self.by_name
            .values()
            .map(|m| {
                let i = m.info();
                Summary {
                    name: i.name.clone(),
                    default: self.default.as_deref() == Some(i.name.as_str()),
                    test_model: TEST_MODELS.contains(&i.name.as_str()),
                    folder: m.folder().map(|f| f.display().to_string()),
                    weights_bytes: m.weights_bytes(),
                    defaults: i.defaults.clone(),
                    size_multiple: i.size_multiple,
                    dtype: i.dtype.clone(),
                    conditioning: i.conditioning,
                }
            })
            .collect()
    }

    /// Where the model folders were looked for.
    pub fn searched(&self) -> &SearchPath {
        &self.searched
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    pub fn default_name(&self) -> Option<&str> {
        self.default.as_deref()
    }
}

/// Gaussian noise from libtorch's CPU generator seeded with `seed`: the same on every machine and device for the
/// same seed and shape, and the same as `torch.manual_seed(seed); torch.randn(shape)` in Python.
///
/// The CPU generator is global to the process; the lock keeps two workers from seeding and drawing interleaved,
/// which would give two jobs with the same seed different noise.
pub fn seeded_noise(seed: i64, shape: &[i64]) -> Result<tch::Tensor> {
    static GENERATOR: parking_lot::Mutex<()> = parking_lot::Mutex::new(());
    let _guard = GENERATOR.lock();
    tch::manual_seed(seed);
    Ok(tch::Tensor::f_randn(shape, (tch::Kind::Float, tch::Device::Cpu))?)
}
