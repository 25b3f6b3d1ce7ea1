//! Step caching: skip the transformer's blocks at steps where their effect is predictably close to the last one
//! computed, and reuse that effect (the blocks' residual: hidden states out minus hidden states in).
//!
//! The method is EasyCache's (Zhou et al., "Less is Enough: Training-Free Video Diffusion Acceleration via
//! Runtime-Adaptive Cache", 2025), chosen over the others for what vgen runs:
//! - TeaCache and MagCache decide from curves fitted offline per model (a polynomial over the modulated input's
//!   change; a per-step magnitude ratio). A LoRA, a distilled schedule or the project's own model changes those
//!   curves, and vgen would need a calibration per model and adapter set.
//! - FirstBlockCache needs no calibration but runs the first block at every step to decide, so a skipped step
//!   still costs one block in N: on the default model (6 blocks) that caps the saving well below what a skip
//!   could give.
//! - EasyCache needs neither: it measures, at run time, how much the model's output moves per unit of input
//!   movement (the transformation rate k, from the last two computed steps), predicts the output's change from the
//!   input's at each new step, and skips while the accumulated prediction stays under a threshold. A skipped step
//!   costs the patch embedding and the output head only.
//!
//! A skipped step reuses the last residual as it is. Extrapolating it along the last two computed residuals (a
//! first-order forecast, as TaylorSeer does) was tried on the default model at 20 steps and lost more: 8.3 points
//! at threshold 0.15 against 1.0, the colours drifting.
//!
//! Invariants:
//! - The first `warmup` steps, and the last step, always run the blocks (the last one sets the clean image's
//!   details; the first ones set the layout, where the output changes fastest).
//! - A step is skipped only with a residual from a computed step of the same job and a rate measured from two
//!   computed steps; the accumulated error restarts at 0 whenever the blocks run.
//! - With no cache (`threshold` None) every step runs the blocks: the result is bit for bit the uncached one.

use tch::Tensor;

/// The threshold `"step_cache": true` means: the largest that keeps the default model's held-out score within
/// 2 points of the uncached one at its default 12 steps (0.15 loses 2.1 there; at 20 steps 0.15 loses 1.0 and
/// 0.1 2.1, within a clip of each other: `tools/shapes/shipped/step_cache.json`).
pub const DEFAULT_THRESHOLD: f64 = 0.1;

/// Steps that always run the blocks at the start: 15% of the schedule (3 of 20), at least 2 (two computed steps
/// are needed to measure the transformation rate). On the default model a tenth lost a point more at the same
/// threshold, a quarter saved less (`tools/shapes/evaluate_step_cache.py`).
fn warmup(steps: usize) -> usize {
    (steps * 3 / 20).max(2)
}

pub struct StepCache {
    threshold: f64,
    warmup: usize,
    steps: usize,
    /// The model input and output of the last computed step (the next computed step measures the rate from them).
    last: Option<(Tensor, Tensor)>,
    rate: Option<f64>,
    /// The blocks' residual of the last computed step.
    residual: Option<Tensor>,
    /// The previous step's model input (computed or not) and the accumulated predicted change since the last
    /// computed step.
    previous_input: Option<Tensor>,
    accumulated: f64,
    skipped: Vec<u32>,
}

/// One step of a model under an optional cache: asks the cache whether to reuse a residual, runs `forward`
/// (`forward(reuse, record)` returns the output and, when `record`, the blocks' residual), and records a computed
/// step. The one place the protocol (`reuse`, then the model, then `computed`) is written.
pub fn step(
    cache: &mut Option<StepCache>,
    index: usize,
    input: &Tensor,
    forward: impl FnOnce(Option<&Tensor>, bool) -> crate::Result<(Tensor, Option<Tensor>)>,
) -> crate::Result<Tensor> {
    let reuse = cache.as_mut().and_then(|c| c.reuse(index, input));
    let record = cache.is_some() && reuse.is_none();
    let (output, residual) = forward(reuse.as_ref(), record)?;
    if let (Some(c), Some(residual)) = (cache.as_mut(), residual) {
        c.computed(input, &output, residual);
    }
    Ok(output)
}

/// ‖a − b‖₁ / ‖b‖₁.
fn relative_change(a: &Tensor, b: &Tensor) -> f64 {
    let denominator = b.abs().mean(tch::Kind::Float).double_value(&[]);
    (a - b).abs().mean(tch::Kind::Float).double_value(&[]) / denominator.max(1e-12)
}

impl StepCache {
    /// A cache for a schedule of `steps`; `threshold` None turns it off.
    pub fn new(threshold: Option<f64>, steps: usize) -> Option<Self> {
        let threshold = threshold?;
        Some(StepCache {
            threshold,
            warmup: warmup(steps),
            steps,
            last: None,
            rate: None,
            residual: None,
            previous_input: None,
            accumulated: 0.0,
            skipped: Vec::new(),
        })
    }

    /// Whether step `index` (0-based) may reuse the last residual instead of running the blocks, given the
    /// model's input at this step. Call once per step, before the model.
    pub fn reuse(&mut self, index: usize, input: &Tensor) -> Option<Tensor> {
        let change = self.previous_input.as_ref().map(|p| relative_change(input, p));
        self.previous_input = Some(input.shallow_clone());
        let (Some(rate), Some(change)) = (self.rate, change) else { return None };
        if index < self.warmup || index + 1 == self.steps || self.residual.is_none() {
            return None;
        }
        self.accumulated += rate * change;
        if self.accumulated < self.threshold {
            self.skipped.push(index as u32 + 1);
            self.residual.as_ref().map(Tensor::shallow_clone)
        } else {
            None
        }
    }

    /// Records a computed step: its model input and output, and the blocks' residual.
    pub fn computed(&mut self, input: &Tensor, output: &Tensor, residual: Tensor) {
        if let Some((last_input, last_output)) = &self.last {
            let moved = relative_change(input, last_input);
            if moved > 0.0 {
                self.rate = Some(relative_change(output, last_output) / moved);
            }
        }
        self.last = Some((input.shallow_clone(), output.shallow_clone()));
        self.residual = Some(residual);
        self.accumulated = 0.0;
    }

    /// Forgets every computed step (another expert takes over): the next steps run the blocks until a rate is
    /// measured again.
    pub fn restart(&mut self) {
        self.last = None;
        self.rate = None;
        self.residual = None;
        self.previous_input = None;
        self.accumulated = 0.0;
    }

    /// The steps (1-based) that reused a residual.
    pub fn skipped(&self) -> &[u32] {
        &self.skipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_and_last_steps_always_run_and_a_skip_needs_a_measured_rate() {
        let steps = 10;
        let mut cache = StepCache::new(Some(10.0), steps).unwrap(); // a threshold that skips whatever it may
        let mut ran = Vec::new();
        for i in 0..steps {
            let input = Tensor::from_slice(&[1.0f32 + i as f32 * 0.01]);
            if cache.reuse(i, &input).is_none() {
                ran.push(i + 1);
                cache.computed(&input, &(&input * 2.0), input.zeros_like());
            }
        }
        assert_eq!(ran, vec![1, 2, 10], "the warm-up (2 of 10) and the last step");
        assert_eq!(cache.skipped(), &[3, 4, 5, 6, 7, 8, 9]);
        assert!(StepCache::new(None, steps).is_none(), "no threshold, no cache");
    }

    #[test]
    fn the_accumulated_predicted_change_decides_and_restarts_when_the_blocks_run() {
        let steps = 20;
        let mut cache = StepCache::new(Some(0.025), steps).unwrap();
        let mut ran = Vec::new();
        for i in 0..steps {
            // The input moves 1% a step; the output 2% per 1% of input (rate 2): 2% predicted a step, so with a
            // threshold of 2.5% every other step after the warm-up (3 of 20) is skipped, never the last.
            let input = Tensor::from_slice(&[1.01f32.powi(i as i32)]);
            if cache.reuse(i, &input).is_none() {
                ran.push(i + 1);
                let output = Tensor::from_slice(&[1.02f32.powi(i as i32)]);
                cache.computed(&input, &output, input.zeros_like());
            }
        }
        assert_eq!(cache.skipped(), &[4, 6, 8, 10, 12, 14, 16, 18]);
        assert_eq!(ran.len() + cache.skipped().len(), steps);
    }
}
