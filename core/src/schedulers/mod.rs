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
        self.build_with(steps, None)
    }

    /// A scheduler for `steps`, or for a fixed list of timesteps (descending, in 1..=N: the steps are then these),
    /// as distilled models sample (lightx2v's [1000, 750, 500, 250] with shift 5). The list goes to the scheduler
    /// as diffusers' `set_timesteps(sigmas=t/N)` takes it.
    pub fn build_with(&self, steps: usize, timesteps: Option<&[u32]>) -> Result<Box<dyn Scheduler>> {
        let n = self.num_train_timesteps();
        let custom: Option<Vec<f64>> = timesteps.map(|t| t.iter().map(|&t| t as f64 / n as f64).collect());
        if let Some(t) = timesteps {
            check_timesteps(t, n)?;
        }
        let steps = custom.as_ref().map_or(steps, Vec::len);
        if steps == 0 {
            return Err(Error::invalid("a schedule needs at least one step"));
        }
        Ok(match self {
            Self::UniPc(c) => Box::new(unipc::UniPc::new(c, steps, custom.as_deref())?),
            Self::Euler(c) => Box::new(euler::Euler::new(c, steps, custom.as_deref())?),
        })
    }

    /// This configuration as `sampler` asks for it: the other kind of scheduler (with the same training schedule
    /// and shift, and each kind's own defaults otherwise) and another flow shift; the same one when it asks for
    /// nothing.
    pub fn for_sampler(&self, sampler: &Sampler) -> Self {
        let n = self.num_train_timesteps();
        let shift = self.flow_shift();
        let switched = match (sampler.kind, self) {
            (Some(SamplerKind::Euler), Self::UniPc(_)) => Self::Euler(euler::EulerConfig::flow(n, shift)),
            (Some(SamplerKind::Unipc), Self::Euler(_)) => Self::UniPc(unipc::UniPcConfig::flow(n, shift)),
            _ => self.clone(),
        };
        match sampler.flow_shift {
            Some(shift) => switched.with_flow_shift(shift),
            None => switched,
        }
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

/// Which sampler a request (or a model's `vgen.json`) asks for; every field left out keeps the model's own
/// scheduler setting. Distilled models sample with settings of their own: lightx2v's 4-step LoRAs with
/// `{"kind": "euler", "flow_shift": 5, "timesteps": [1000, 750, 500, 250]}` and guidance 1.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sampler {
    /// Flow-matching `euler` or `unipc`; the model's scheduler when left out.
    pub kind: Option<SamplerKind>,
    /// The schedule's shift (higher spends more of the steps at high noise).
    pub flow_shift: Option<f64>,
    /// A fixed list of timesteps, strictly descending, each in 1..=1000 (the training schedule's length): the
    /// steps are then these, and a request's `steps`, if given, must equal their number.
    pub timesteps: Option<Vec<u32>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SamplerKind {
    Euler,
    Unipc,
}

impl Sampler {
    /// This request's choices over a model's defaults, field by field.
    pub fn over(&self, defaults: &Sampler) -> Sampler {
        Sampler {
            kind: self.kind.or(defaults.kind),
            flow_shift: self.flow_shift.or(defaults.flow_shift),
            timesteps: self.timesteps.clone().or_else(|| defaults.timesteps.clone()),
        }
    }

    /// Checks what can be checked without the model: a finite positive shift and a well-formed timestep list.
    pub fn check(&self, field: &str) -> Result<()> {
        if let Some(shift) = self.flow_shift {
            if !(shift.is_finite() && shift > 0.0 && shift <= 100.0) {
                return Err(Error::invalid(format!("{field}.flow_shift {shift} is outside (0, 100]")));
            }
        }
        if let Some(t) = &self.timesteps {
            check_timesteps(t, 1000).map_err(|e| Error::invalid(format!("{field}.{}", e.message())))?;
        }
        Ok(())
    }
}

/// A fixed timestep list: non-empty, strictly descending, each in 1..=n.
fn check_timesteps(t: &[u32], n: usize) -> Result<()> {
    if t.is_empty() {
        return Err(Error::invalid("timesteps is empty: give at least one, or leave it out"));
    }
    if let Some(bad) = t.iter().find(|&&x| x == 0 || x as usize > n) {
        return Err(Error::invalid(format!("timesteps: {bad} is outside 1..={n}")));
    }
    if let Some(w) = t.windows(2).find(|w| w[1] >= w[0]) {
        return Err(Error::invalid(format!("timesteps must fall strictly: {} then {}", w[0], w[1])));
    }
    Ok(())
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
