//! ETAs learned from this engine's own history.
//!
//! Every finished job records how long each stage took. An estimate for a new job comes from, in order of trust:
//! the history of this exact configuration (model, device, size, frames, steps: [`Confidence::Measured`]); the
//! history of the same model and device at other sizes, scaled by the amount of work ([`Confidence::Scaled`]);
//! or a prior from the amount of work alone ([`Confidence::Prior`]). The same per-stage plan weights progress, so
//! that 50% means half the time.

use super::job::{Confidence, Stage};
use super::request::Params;
use crate::device::Device;
use std::collections::HashMap;

const STAGES: usize = Stage::ALL.len();
/// Weight of the newest observation in the moving averages.
const ALPHA: f64 = 0.3;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ExactKey {
    model: String,
    device: Device,
    width: u32,
    height: u32,
    frames: u32,
    steps: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct FamilyKey {
    model: String,
    device: Device,
}

/// Milliseconds per stage for one job.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plan {
    pub stage_ms: [f64; STAGES],
    pub confidence: Confidence,
}

impl Plan {
    pub fn total_ms(&self) -> f64 {
        self.stage_ms.iter().sum()
    }

    /// Progress in [0, 1] at a fraction of the way through a stage.
    pub fn progress(&self, stage: Stage, fraction: f64) -> f64 {
        let total = self.total_ms().max(1e-9);
        let done: f64 = self.stage_ms[..stage.index()].iter().sum();
        ((done + self.stage_ms[stage.index()] * fraction.clamp(0.0, 1.0)) / total).clamp(0.0, 1.0)
    }

    /// Milliseconds left, given how long the job has run so far and where it is. Once a stage is under way its
    /// own pace is the best guide; the planned remainder is scaled by how the job has kept to plan so far.
    pub fn remaining_ms(&self, stage: Stage, fraction: f64, stage_elapsed_ms: f64, total_elapsed_ms: f64) -> f64 {
        let i = stage.index();
        let fraction = fraction.clamp(0.0, 1.0);
        let here = if fraction > 0.0 {
            stage_elapsed_ms / fraction * (1.0 - fraction)
        } else {
            (self.stage_ms[i] - stage_elapsed_ms).max(0.0)
        };
        let planned_so_far: f64 = self.stage_ms[..i].iter().sum::<f64>() + self.stage_ms[i] * fraction;
        let pace = if planned_so_far > 1.0 { (total_elapsed_ms / planned_so_far).clamp(0.25, 4.0) } else { 1.0 };
        here + self.stage_ms[i + 1..].iter().sum::<f64>() * pace
    }
}

/// Units of work: pixels × frames, and that × steps for the denoising stage.
fn units(p: &Params) -> (f64, f64) {
    let pixels = p.width as f64 * p.height as f64 * p.num_frames as f64;
    (pixels, pixels * p.steps as f64)
}

#[derive(Default)]
pub struct EtaModel {
    exact: HashMap<ExactKey, ([f64; STAGES], u32)>,
    /// Milliseconds per unit of work for each stage.
    family: HashMap<FamilyKey, ([f64; STAGES], u32)>,
}

impl EtaModel {
    pub fn plan(&self, model: &str, device: Device, p: &Params) -> Plan {
        let exact = ExactKey {
            model: model.into(),
            device,
            width: p.width,
            height: p.height,
            frames: p.num_frames,
            steps: p.steps,
        };
        if let Some((ms, _)) = self.exact.get(&exact) {
            return Plan { stage_ms: *ms, confidence: Confidence::Measured };
        }
        let (pixels, steps_pixels) = units(p);
        let scale = |i: usize| if i == Stage::Generating.index() { steps_pixels } else { pixels };
        if let Some((per_unit, _)) = self.family.get(&FamilyKey { model: model.into(), device }) {
            let stage_ms = std::array::from_fn(|i| per_unit[i] * scale(i));
            return Plan { stage_ms, confidence: Confidence::Scaled };
        }
        // The prior: denoising dominates; a CPU does roughly 10 ns of model work per pixel-step, a GPU 100× less.
        let per_pixel_step = if device.is_cuda() { 1e-7 } else { 1e-5 };
        let mut stage_ms = [0.0; STAGES];
        stage_ms[Stage::Validating.index()] = 0.1;
        stage_ms[Stage::EncodingPrompt.index()] = 5.0;
        stage_ms[Stage::Generating.index()] = steps_pixels * per_pixel_step;
        stage_ms[Stage::Decoding.index()] = pixels * per_pixel_step * 4.0;
        stage_ms[Stage::EncodingVideo.index()] = pixels * 1e-6;
        stage_ms[Stage::Finalizing.index()] = 0.1;
        Plan { stage_ms, confidence: Confidence::Prior }
    }

    /// Learns from a finished job.
    pub fn record(&mut self, model: &str, device: Device, p: &Params, stage_ms: [f64; STAGES]) {
        let exact = ExactKey {
            model: model.into(),
            device,
            width: p.width,
            height: p.height,
            frames: p.num_frames,
            steps: p.steps,
        };
        blend(self.exact.entry(exact).or_insert((stage_ms, 0)), stage_ms);
        let (pixels, steps_pixels) = units(p);
        let per_unit = std::array::from_fn(|i| {
            stage_ms[i] / if i == Stage::Generating.index() { steps_pixels } else { pixels }.max(1.0)
        });
        blend(self.family.entry(FamilyKey { model: model.into(), device }).or_insert((per_unit, 0)), per_unit);
    }
}

fn blend(entry: &mut ([f64; STAGES], u32), new: [f64; STAGES]) {
    let (avg, n) = entry;
    let alpha = if *n == 0 { 1.0 } else { ALPHA.max(1.0 / (*n as f64 + 1.0)) };
    for (a, x) in avg.iter_mut().zip(new) {
        *a += alpha * (x - *a);
    }
    *n += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(w: u32, steps: u32) -> Params {
        Params {
            prompt: "x".into(),
            negative_prompt: String::new(),
            width: w,
            height: w,
            num_frames: 17,
            fps: 8.0,
            steps,
            guidance_scale: 1.0,
            guidance_scale_2: None,
            seed: 0,
            preview_every: None,
            sampler: Default::default(),
            step_cache: None,
            vae_tiling: None,
            loras: Vec::new(),
            image: None,
            last_image: None,
            segments: Vec::new(),
            color_match: true,
        }
    }

    #[test]
    fn learns_exact_then_scales_to_other_sizes() {
        let mut m = EtaModel::default();
        let p = params(64, 10);
        assert_eq!(m.plan("m", Device::Cpu, &p).confidence, Confidence::Prior);
        let mut ms = [0.0; STAGES];
        ms[Stage::Generating.index()] = 1000.0;
        ms[Stage::Decoding.index()] = 100.0;
        m.record("m", Device::Cpu, &p, ms);
        let exact = m.plan("m", Device::Cpu, &p);
        assert_eq!(exact.confidence, Confidence::Measured);
        assert!((exact.total_ms() - 1100.0).abs() < 1e-6);
        // Twice the steps: twice the denoising, the same decode.
        let scaled = m.plan("m", Device::Cpu, &params(64, 20));
        assert_eq!(scaled.confidence, Confidence::Scaled);
        assert!((scaled.stage_ms[Stage::Generating.index()] - 2000.0).abs() < 1e-6);
        assert!((scaled.stage_ms[Stage::Decoding.index()] - 100.0).abs() < 1e-6);
        assert_eq!(m.plan("m", Device::Cuda(0), &p).confidence, Confidence::Prior);
    }

    #[test]
    fn progress_is_weighted_by_time_not_by_stage_count() {
        let mut stage_ms = [0.0; STAGES];
        stage_ms[Stage::Generating.index()] = 900.0;
        stage_ms[Stage::Decoding.index()] = 100.0;
        let plan = Plan { stage_ms, confidence: Confidence::Measured };
        assert!((plan.progress(Stage::Generating, 0.5) - 0.45).abs() < 1e-9);
        assert!((plan.progress(Stage::Decoding, 0.0) - 0.9).abs() < 1e-9);
        // Half-way through denoising after 900 ms (twice as slow as planned): 900 ms left there, decode 200 ms.
        let left = plan.remaining_ms(Stage::Generating, 0.5, 900.0, 900.0);
        assert!((left - 1100.0).abs() < 1e-6, "{left}");
    }
}
