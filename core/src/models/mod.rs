//! Models: what the engine runs.
//!
//! The engine talks to a model through one narrow interface, [`Model`]: describe yourself, estimate your memory,
//! and generate while reporting each stage and step to an [`Attempt`]. Reporting is what lets the engine give
//! progress, an ETA, previews, cancellation and deadlines at step granularity for every model alike.

pub mod faulty;
pub mod noop;
pub mod testcard;
pub mod wan;
pub mod weights;

use crate::device::Device;
use crate::engine::{Attempt, FrameRule, Params};
use crate::error::{Error, ErrorCode, Result};
use crate::video::Video;
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

    fn generate(&self, params: &Params, attempt: &mut Attempt<'_>) -> Result<Video>;

    /// The size of the model's weight files, in bytes (0 for a model without weights).
    fn weights_bytes(&self) -> u64 {
        0
    }
}

/// The models an engine can run, by name, and which one is the default.
#[derive(Clone, Default)]
pub struct Models {
    by_name: BTreeMap<String, Arc<dyn Model>>,
    default: Option<String>,
}

impl Models {
    /// The models every engine has: the test card (`testcard`, the default until a trained model is installed),
    /// `noop`, which does no work (for measuring the engine itself), and `faulty`, the test card failing on command
    /// (`!fail=CODE*N`, `!panic`, `!oom`, `!slow=MS` in the prompt), so that a host can test how it handles failure.
    pub fn builtin() -> Self {
        let mut m = Self::default();
        let card: Arc<dyn Model> = Arc::new(testcard::TestCard::new());
        m.insert(card.clone());
        m.insert(Arc::new(noop::NoOp::new()));
        m.insert(Arc::new(faulty::Faulty::new(card)));
        m.default = Some(testcard::NAME.to_string());
        m
    }

    /// The built-in models plus every Wan folder (one holding `model_index.json`) found in the folders named by
    /// `VGEN_MODELS` (colon-separated) or, when it is unset, in `./models`. A shipped trained model becomes the
    /// default. Folders that fail to open are reported and skipped.
    pub fn discover() -> (Self, Vec<Error>) {
        let roots: Vec<std::path::PathBuf> = match std::env::var_os("VGEN_MODELS") {
            Some(v) => std::env::split_paths(&v).collect(),
            None => vec![std::path::PathBuf::from("models")],
        };
        Self::discover_in(&roots)
    }

    /// The built-in models plus every Wan folder found in `roots`; see [`Models::discover`].
    pub fn discover_in(roots: &[std::path::PathBuf]) -> (Self, Vec<Error>) {
        let mut m = Self::builtin();
        let mut problems = Vec::new();
        for root in roots {
            let Ok(entries) = std::fs::read_dir(&root) else { continue };
            let mut dirs: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
            dirs.sort();
            for dir in dirs.into_iter().filter(|d| d.join("model_index.json").is_file()) {
                match wan::pipeline::WanModel::open(&dir) {
                    Ok(model) => {
                        let name = model.info().name.clone();
                        m.insert(Arc::new(model));
                        if name == DEFAULT_TRAINED {
                            m.default = Some(name);
                        }
                    }
                    Err(e) => problems.push(e),
                }
            }
        }
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

    /// Adds or replaces a model. The first model added becomes the default if there is none.
    pub fn insert(&mut self, model: Arc<dyn Model>) {
        let name = model.info().name.clone();
        if self.default.is_none() {
            self.default = Some(name.clone());
        }
        self.by_name.insert(name, model);
    }

    /// Makes the named model the default.
    pub fn set_default(&mut self, name: &str) -> Result<()> {
        self.get(Some(name))?;
        self.default = Some(name.to_string());
        Ok(())
    }

    /// The named model, or the default one for `None`.
    pub fn get(&self, name: Option<&str>) -> Result<Arc<dyn Model>> {
        let name = match name.or(self.default.as_deref()) {
            Some(n) => n,
            None => return Err(Error::new(ErrorCode::NotFound, "no model is installed")),
        };
        self.by_name.get(name).cloned().ok_or_else(|| {
            let known: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
            Error::new(ErrorCode::NotFound, format!("unknown model {name:?}; installed: {}", known.join(", ")))
        })
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
