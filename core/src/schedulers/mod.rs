//! Flow-matching schedulers: the sequence of noise levels a generation walks down, and the update at each step.
//!
//! Both follow diffusers 0.42.1 to the bit where it matters: the schedule is built in f64 and stored as f32, and
//! every per-step scalar is computed in f32, as diffusers does with 0-d float32 tensors.

pub mod euler;
pub mod unipc;

use crate::error::{Error, Result};
use std::path::Path;
use tch::Tensor;

/// A sampler over a fixed number of steps. Create one per generation: it keeps the history of model outputs.
pub trait Scheduler: Send {
    /// The timestep to give the model at each step.
    fn timesteps(&self) -> &[f32];
    /// The noise level at each step, plus the final one (steps + 1 values).
    fn sigmas(&self) -> &[f32];
    /// One step: from the model's output at the current step and the current sample, the next sample.
    fn step(&mut self, model_output: &Tensor, sample: &Tensor) -> Result<Tensor>;
}

/// A scheduler's configuration as `scheduler_config.json` gives it.
#[derive(Clone, Debug)]
pub enum SchedulerConfig {
    UniPc(unipc::UniPcConfig),
    Euler(euler::EulerConfig),
}

impl SchedulerConfig {
    /// Reads `scheduler_config.json`, choosing the scheduler by its `_class_name`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::new(crate::ErrorCode::NotFound, format!("{}: {e}", path.display())))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;
        let class = value.get("_class_name").and_then(|c| c.as_str()).unwrap_or("");
        let parse = |e: serde_json::Error| Error::invalid(format!("{}: {e}", path.display()));
        match class {
            "UniPCMultistepScheduler" => Ok(Self::UniPc(serde_json::from_value(value).map_err(parse)?)),
            "FlowMatchEulerDiscreteScheduler" => Ok(Self::Euler(serde_json::from_value(value).map_err(parse)?)),
            other => Err(Error::invalid(format!(
                "{}: scheduler {other:?} is not supported; use UniPCMultistepScheduler or FlowMatchEulerDiscreteScheduler",
                path.display()
            ))),
        }
    }

    /// The training schedule's length, which timesteps count in (1000 for Wan).
    pub fn num_train_timesteps(&self) -> usize {
        match self {
            Self::UniPc(c) => c.num_train_timesteps,
            Self::Euler(c) => c.num_train_timesteps,
        }
    }

    /// A scheduler set up for this many steps.
    pub fn build(&self, steps: usize) -> Result<Box<dyn Scheduler>> {
        if steps == 0 {
            return Err(Error::invalid("a schedule needs at least one step"));
        }
        Ok(match self {
            Self::UniPc(c) => Box::new(unipc::UniPc::new(c, steps)?),
            Self::Euler(c) => Box::new(euler::Euler::new(c, steps)?),
        })
    }

    /// The flow shift: higher spends more steps at high noise (3.0 for 480p, 5.0 for 720p).
    pub fn flow_shift(&self) -> f64 {
        match self {
            Self::UniPc(c) => c.flow_shift,
            Self::Euler(c) => c.shift,
        }
    }

    /// The same scheduler with another flow shift.
    pub fn with_flow_shift(&self, shift: f64) -> Self {
        match self {
            Self::UniPc(c) => Self::UniPc(unipc::UniPcConfig { flow_shift: shift, ..c.clone() }),
            Self::Euler(c) => Self::Euler(euler::EulerConfig { shift, ..c.clone() }),
        }
    }
}

/// Rejects a configuration value vgen does not implement, naming it.
pub(crate) fn unsupported(what: &str) -> Error {
    Error::new(crate::ErrorCode::Unsupported, format!("scheduler setting not supported: {what}"))
}

/// Fails on the first of these settings that is switched on.
pub(crate) fn reject_enabled(settings: &[(bool, &str)]) -> Result<()> {
    match settings.iter().find(|(on, _)| *on) {
        Some((_, what)) => Err(unsupported(what)),
        None => Ok(()),
    }
}
