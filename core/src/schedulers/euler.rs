//! Flow-matching Euler (`FlowMatchEulerDiscreteScheduler` with a static shift).
//!
//! The schedule is shifted twice, as diffusers does: once when the scheduler is built (which sets σ_max and
//! σ_min) and again in `set_timesteps`. So the last non-zero σ is not 1/1000 but the shift of σ_min.

use super::Scheduler;
use crate::error::Result;
use serde::Deserialize;
use tch::Tensor;

#[derive(Clone, Debug, Deserialize)]
pub struct EulerConfig {
    #[serde(default = "thousand")]
    pub num_train_timesteps: usize,
    #[serde(default = "one")]
    pub shift: f64,
    #[serde(default)]
    pub use_dynamic_shifting: bool,
    #[serde(default)]
    pub invert_sigmas: bool,
    #[serde(default)]
    pub shift_terminal: Option<f64>,
    #[serde(default)]
    pub use_karras_sigmas: bool,
    #[serde(default)]
    pub use_exponential_sigmas: bool,
    #[serde(default)]
    pub use_beta_sigmas: bool,
    #[serde(default)]
    pub stochastic_sampling: bool,
}

impl EulerConfig {
    /// Flow-matching Euler with a static shift and diffusers' other defaults.
    pub fn flow(num_train_timesteps: usize, shift: f64) -> Self {
        EulerConfig {
            num_train_timesteps,
            shift,
            use_dynamic_shifting: false,
            invert_sigmas: false,
            shift_terminal: None,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            stochastic_sampling: false,
        }
    }
}

fn thousand() -> usize {
    1000
}
fn one() -> f64 {
    1.0
}

pub struct Euler {
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    index: usize,
}

impl Euler {
    /// `custom`: unshifted σ per step (a fixed timestep list over N), as `set_timesteps(sigmas=...)` takes them:
    /// shifted once, in f32, as diffusers does with them; `None` for its linspace over `steps`.
    pub fn new(c: &EulerConfig, steps: usize, custom: Option<&[f64]>) -> Result<Self> {
        super::reject_enabled(&[
            (c.use_dynamic_shifting, "use_dynamic_shifting"),
            (c.invert_sigmas, "invert_sigmas"),
            (c.shift_terminal.is_some(), "shift_terminal"),
            (c.use_karras_sigmas, "use_karras_sigmas"),
            (c.use_exponential_sigmas, "use_exponential_sigmas"),
            (c.use_beta_sigmas, "use_beta_sigmas"),
            (c.stochastic_sampling, "stochastic_sampling"),
        ])?;
        let n = c.num_train_timesteps as f64;
        let shift = c.shift;
        if let Some(list) = custom {
            let shift = shift as f32;
            let mut sigmas: Vec<f32> =
                list.iter().map(|&s| s as f32).map(|s| shift * s / (1.0 + (shift - 1.0) * s)).collect();
            let timesteps = sigmas.iter().map(|s| s * n as f32).collect();
            sigmas.push(0.0);
            return Ok(Self { timesteps, sigmas, index: 0 });
        }
        // Construction: σ = t/N for t = N..1 in f32, shifted in f32; σ_max and σ_min are its ends.
        let shift_f32 = |s: f32| (shift as f32 * s) / (1.0 + (shift as f32 - 1.0) * s);
        let sigma_max = shift_f32(c.num_train_timesteps as f32 / n as f32) as f64;
        let sigma_min = shift_f32(1.0 / n as f32) as f64;
        // set_timesteps: a linspace of timesteps in f64, to σ, shifted again, stored as f32.
        let (t0, t1) = (sigma_max * n, sigma_min * n);
        let mut sigmas: Vec<f32> = (0..steps)
            .map(|i| {
                let t = if steps == 1 { t0 } else { t0 + (t1 - t0) * i as f64 / (steps - 1) as f64 };
                let s = t / n;
                (shift * s / (1.0 + (shift - 1.0) * s)) as f32
            })
            .collect();
        let timesteps = sigmas.iter().map(|s| s * n as f32).collect();
        sigmas.push(0.0);
        Ok(Self { timesteps, sigmas, index: 0 })
    }
}

impl Scheduler for Euler {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    fn step(&mut self, model_output: &Tensor, sample: &Tensor) -> Result<Tensor> {
        let i = self.index;
        let dt = self.sigmas[i + 1] - self.sigmas[i];
        self.index += 1;
        Ok(sample.f_add(&model_output.f_mul_scalar(dt as f64)?)?)
    }
}
