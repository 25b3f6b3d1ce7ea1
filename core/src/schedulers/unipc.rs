//! UniPC multistep in its flow-matching form (`UniPCMultistepScheduler` with `use_flow_sigmas`,
//! `prediction_type="flow_prediction"`): the scheduler Wan2.1 ships. A predictor (UniP) of order up to
//! `solver_order`, then at the next step a corrector (UniC) that refines the sample with the new model output.
//! Paper: Zhao et al., "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion Models",
//! 2023.
//!
//! With flow sigmas α = 1 − σ, and λ = ln α − ln σ. The last σ is zero, so λ is +∞ at the final step and the
//! update collapses to the model's estimate of the clean sample, exactly as in diffusers (IEEE arithmetic does
//! it: expm1(−∞) = −1).

use super::{Scheduler, unsupported};
use crate::error::{Error, Result};
use serde::Deserialize;
use tch::Tensor;

#[derive(Clone, Debug, Deserialize)]
pub struct UniPcConfig {
    #[serde(default = "thousand")]
    pub num_train_timesteps: usize,
    #[serde(default = "two")]
    pub solver_order: usize,
    #[serde(default = "epsilon")]
    pub prediction_type: String,
    #[serde(default)]
    pub use_flow_sigmas: bool,
    #[serde(default = "one")]
    pub flow_shift: f64,
    #[serde(default = "yes")]
    pub predict_x0: bool,
    #[serde(default = "bh2")]
    pub solver_type: String,
    #[serde(default = "yes")]
    pub lower_order_final: bool,
    #[serde(default)]
    pub disable_corrector: Vec<usize>,
    #[serde(default = "zero")]
    pub final_sigmas_type: String,
    #[serde(default)]
    pub use_dynamic_shifting: bool,
    #[serde(default)]
    pub shift_terminal: Option<f64>,
    #[serde(default)]
    pub use_karras_sigmas: bool,
    #[serde(default)]
    pub use_exponential_sigmas: bool,
    #[serde(default)]
    pub use_beta_sigmas: bool,
    #[serde(default)]
    pub thresholding: bool,
    #[serde(default)]
    pub solver_p: Option<serde_json::Value>,
}

impl UniPcConfig {
    /// UniPC in its flow-matching form with diffusers' other defaults, as Wan's pipelines configure it.
    pub fn flow(num_train_timesteps: usize, flow_shift: f64) -> Self {
        UniPcConfig {
            num_train_timesteps,
            solver_order: 2,
            prediction_type: "flow_prediction".into(),
            use_flow_sigmas: true,
            flow_shift,
            predict_x0: true,
            solver_type: bh2(),
            lower_order_final: true,
            disable_corrector: Vec::new(),
            final_sigmas_type: zero(),
            use_dynamic_shifting: false,
            shift_terminal: None,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            thresholding: false,
            solver_p: None,
        }
    }
}

fn thousand() -> usize {
    1000
}
fn two() -> usize {
    2
}
fn one() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}
fn epsilon() -> String {
    "epsilon".into()
}
fn bh2() -> String {
    "bh2".into()
}
fn zero() -> String {
    "zero".into()
}

pub struct UniPc {
    order: usize,
    predict_x0: bool,
    bh2: bool,
    lower_order_final: bool,
    disable_corrector: Vec<usize>,
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    index: usize,
    /// The last `order` converted model outputs (x0 predictions), oldest first.
    outputs: Vec<Tensor>,
    last_sample: Option<Tensor>,
    this_order: usize,
    lower_order_nums: usize,
}

impl UniPc {
    /// `custom`: unshifted σ per step (a fixed timestep list over N), as `set_timesteps(sigmas=...)` takes them;
    /// `None` for diffusers' linspace over `steps`.
    pub fn new(c: &UniPcConfig, steps: usize, custom: Option<&[f64]>) -> Result<Self> {
        if !c.use_flow_sigmas || c.prediction_type != "flow_prediction" {
            return Err(unsupported("UniPC is supported with use_flow_sigmas and prediction_type=flow_prediction"));
        }
        super::reject_enabled(&[
            (c.use_dynamic_shifting, "use_dynamic_shifting"),
            (c.shift_terminal.is_some(), "shift_terminal"),
            (c.use_karras_sigmas, "use_karras_sigmas"),
            (c.use_exponential_sigmas, "use_exponential_sigmas"),
            (c.use_beta_sigmas, "use_beta_sigmas"),
            (c.thresholding, "thresholding"),
            (c.solver_p.as_ref().is_some_and(|v| !v.is_null()), "solver_p"),
        ])?;
        if !(1..=3).contains(&c.solver_order) {
            return Err(Error::invalid(format!("solver_order {} is outside 1..=3", c.solver_order)));
        }
        let bh2 = match c.solver_type.as_str() {
            "bh2" => true,
            "bh1" => false,
            other => return Err(unsupported(&format!("solver_type {other:?}"))),
        };
        let n = c.num_train_timesteps as f64;
        // σ = linspace(1, 1/N, steps + 1)[:-1] (or the custom list), shifted, in f64; σ₀ nudged off 1 so that
        // ln σ stays finite.
        let unshifted: Vec<f64> = match custom {
            Some(list) => list.to_vec(),
            None => (0..steps).map(|i| 1.0 + (1.0 / n - 1.0) * i as f64 / steps as f64).collect(),
        };
        let mut sigmas: Vec<f64> =
            unshifted.iter().map(|s| c.flow_shift * s / (1.0 + (c.flow_shift - 1.0) * s)).collect();
        if (sigmas[0] - 1.0).abs() < 1e-6 {
            sigmas[0] -= 1e-6;
        }
        // The model sees σ·N truncated to an integer (diffusers casts to int64).
        let timesteps = sigmas.iter().map(|s| (s * n).trunc() as f32).collect();
        let last = match c.final_sigmas_type.as_str() {
            "zero" => 0.0,
            "sigma_min" => *sigmas.last().unwrap_or(&0.0),
            other => return Err(Error::invalid(format!("final_sigmas_type {other:?} is not zero or sigma_min"))),
        };
        sigmas.push(last);
        Ok(Self {
            order: c.solver_order,
            predict_x0: c.predict_x0,
            bh2,
            lower_order_final: c.lower_order_final,
            disable_corrector: c.disable_corrector.clone(),
            timesteps,
            sigmas: sigmas.into_iter().map(|s| s as f32).collect(),
            index: 0,
            outputs: Vec::new(),
            last_sample: None,
            this_order: 0,
            lower_order_nums: 0,
        })
    }

    fn lambda(&self, i: usize) -> f32 {
        let s = self.sigmas[i];
        (1.0 - s).ln() - s.ln()
    }

    /// The coefficients shared by predictor and corrector: h, hφ₁(h), B(h) and the right-hand side b.
    fn coefficients(&self, h: f32, order: usize) -> (f32, f32, Vec<f32>) {
        let hh = if self.predict_x0 { -h } else { h };
        let h_phi_1 = hh.exp_m1();
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let b_h = if self.bh2 { hh.exp_m1() } else { hh };
        let mut factorial = 1.0f32;
        let mut b = Vec::with_capacity(order);
        for i in 1..=order {
            b.push(h_phi_k * factorial / b_h);
            factorial *= (i + 1) as f32;
            h_phi_k = h_phi_k / hh - 1.0 / factorial;
        }
        (h_phi_1, b_h, b)
    }

    /// UniP: the predictor from step `index` (σ_s0) to `index + 1` (σ_t).
    fn predict(&self, x: &Tensor, order: usize) -> Result<Tensor> {
        let i = self.index;
        let (sigma_t, sigma_s0) = (self.sigmas[i + 1], self.sigmas[i]);
        let alpha_t = 1.0 - sigma_t;
        let (lambda_t, lambda_s0) = (self.lambda(i + 1), self.lambda(i));
        let h = lambda_t - lambda_s0;
        let m0 = self.outputs.last().ok_or_else(|| Error::internal("UniPC has no model output"))?;
        let mut rks = Vec::new();
        let mut d1s = Vec::new();
        for k in 1..order {
            let rk = (self.lambda(i - k) - lambda_s0) / h;
            let mk = &self.outputs[self.outputs.len() - 1 - k];
            d1s.push((mk - m0) / rk as f64);
            rks.push(rk);
        }
        rks.push(1.0);
        let (h_phi_1, b_h, b) = self.coefficients(h, order);
        let rhos: Vec<f32> = match order {
            1 => Vec::new(),
            2 => vec![0.5],
            _ => solve(&vandermonde(&rks[..order - 1], order - 1), &b[..order - 1])?,
        };
        let base = x * (sigma_t / sigma_s0) as f64 - m0 * (alpha_t * h_phi_1) as f64;
        if d1s.is_empty() {
            return Ok(base);
        }
        let res = weighted_sum(&rhos, &d1s);
        Ok(base - res * (alpha_t * b_h) as f64)
    }

    /// UniC: corrects the sample at `index` with the model output just computed there.
    fn correct(&self, model_t: &Tensor, last_sample: &Tensor, order: usize) -> Result<Tensor> {
        let i = self.index;
        let (sigma_t, sigma_s0) = (self.sigmas[i], self.sigmas[i - 1]);
        let alpha_t = 1.0 - sigma_t;
        let (lambda_t, lambda_s0) = (self.lambda(i), self.lambda(i - 1));
        let h = lambda_t - lambda_s0;
        let m0 = self.outputs.last().ok_or_else(|| Error::internal("UniPC has no model output"))?;
        let mut rks = Vec::new();
        let mut d1s = Vec::new();
        for k in 1..order {
            let rk = (self.lambda(i - (k + 1)) - lambda_s0) / h;
            let mk = &self.outputs[self.outputs.len() - 1 - k];
            d1s.push((mk - m0) / rk as f64);
            rks.push(rk);
        }
        rks.push(1.0);
        let (h_phi_1, b_h, b) = self.coefficients(h, order);
        let rhos: Vec<f32> = if order == 1 { vec![0.5] } else { solve(&vandermonde(&rks, order), &b)? };
        let base = last_sample * (sigma_t / sigma_s0) as f64 - m0 * (alpha_t * h_phi_1) as f64;
        let d1_t = model_t - m0;
        let mut res = d1_t * rhos[order - 1] as f64;
        if !d1s.is_empty() {
            res = weighted_sum(&rhos[..order - 1], &d1s) + res;
        }
        Ok(base - res * (alpha_t * b_h) as f64)
    }
}

/// R[i][k] = rks[k]^i.
fn vandermonde(rks: &[f32], n: usize) -> Vec<Vec<f32>> {
    (0..n).map(|i| rks[..n].iter().map(|r| r.powi(i as i32)).collect()).collect()
}

/// Solves a small dense system by Gaussian elimination with partial pivoting.
fn solve(a: &[Vec<f32>], b: &[f32]) -> Result<Vec<f32>> {
    let n = b.len();
    let mut m: Vec<Vec<f32>> = a.iter().zip(b).map(|(row, bi)| row.iter().copied().chain([*bi]).collect()).collect();
    for col in 0..n {
        let pivot = (col..n).max_by(|x, y| m[*x][col].abs().total_cmp(&m[*y][col].abs())).unwrap_or(col);
        m.swap(col, pivot);
        if m[col][col] == 0.0 {
            return Err(Error::new(crate::ErrorCode::Numerical, "UniPC: singular system"));
        }
        for row in col + 1..n {
            let (above, below) = m.split_at_mut(row);
            let (pivot_row, this_row) = (&above[col], &mut below[0]);
            let f = this_row[col] / pivot_row[col];
            for (x, p) in this_row[col..=n].iter_mut().zip(&pivot_row[col..=n]) {
                *x -= f * p;
            }
        }
    }
    let mut x = vec![0.0f32; n];
    for row in (0..n).rev() {
        let s: f32 = (row + 1..n).map(|k| m[row][k] * x[k]).sum();
        x[row] = (m[row][n] - s) / m[row][row];
    }
    Ok(x)
}

fn weighted_sum(weights: &[f32], tensors: &[Tensor]) -> Tensor {
    let mut acc = &tensors[0] * weights[0] as f64;
    for (w, t) in weights.iter().zip(tensors).skip(1) {
        acc += t * *w as f64;
    }
    acc
}

impl Scheduler for UniPc {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    fn step(&mut self, model_output: &Tensor, sample: &Tensor) -> Result<Tensor> {
        if self.index >= self.timesteps.len() {
            return Err(Error::internal("UniPC stepped past its last step"));
        }
        // Flow prediction: the model gives velocity v = noise − x0, so x0 = x − σ·v.
        let x0 = sample.f_sub(&model_output.f_mul_scalar(self.sigmas[self.index] as f64)?)?;
        let use_corrector =
            self.index > 0 && !self.disable_corrector.contains(&(self.index - 1)) && self.last_sample.is_some();
        let sample = match (&self.last_sample, use_corrector) {
            (Some(last), true) => self.correct(&x0, last, self.this_order)?,
            _ => sample.shallow_clone(),
        };
        self.outputs.push(x0);
        if self.outputs.len() > self.order {
            drop(self.outputs.remove(0));
        }
        let this_order =
            if self.lower_order_final { self.order.min(self.timesteps.len() - self.index) } else { self.order };
        self.this_order = this_order.min(self.lower_order_nums + 1);
        let prev = self.predict(&sample, self.this_order)?;
        self.last_sample = Some(sample);
        if self.lower_order_nums < self.order {
            self.lower_order_nums += 1;
        }
        self.index += 1;
        Ok(prev)
    }
}
