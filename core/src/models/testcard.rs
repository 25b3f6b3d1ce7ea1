//! `testcard`: a small, real libtorch computation shaped like a diffusion model, so that the engine's whole path
//! (devices, steps, previews, decode, cancellation) runs for real before a trained model is installed.
//!
//! It "denoises" seeded Gaussian noise, in a latent space at a quarter of the resolution, toward a test card
//! that the prompt chooses: a coloured gradient whose phase moves over time. Each step is a flow-matching Euler
//! update toward the card with a 3×3 smoothing convolution, and decoding upsamples the latents 4× to RGB chunk
//! by chunk. The same prompt and seed give the same video on the same device. Given an image, the card starts as
//! that image (at the latent resolution) and turns into the prompt's over the video, so it can continue from a
//! frame as storyboards need.

use super::{Defaults, Model, ModelInfo};
use crate::device::Device;
use crate::engine::{Attempt, FrameRule, Params, Stage};
use crate::error::Result;
use crate::video::{Frames, Video};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use tch::{Kind, Tensor};

pub const NAME: &str = "testcard";
/// The latent grid is this many times smaller than the frame in each direction.
const SCALE: i64 = 4;
/// Frames decoded per chunk; 1 in degraded mode.
const CHUNK: i64 = 4;

pub struct TestCard {
    info: ModelInfo,
}

impl TestCard {
    pub fn new() -> Self {
        Self {
            info: ModelInfo {
                name: NAME.into(),
                weights_hash: "testcard-v1".into(),
                defaults: Defaults {
                    width: 64,
                    height: 64,
                    num_frames: 17,
                    fps: 8.0,
                    steps: 8,
                    guidance_scale: 1.0,
                    guidance_scale_2: None,
                    sampler: None,
                },
                size_multiple: 16,
                frame_rule: FrameRule::OnePlusFourK,
                dtype: "f32".into(),
                conditioning: super::Conditioning { image: true, ..Default::default() },
                takes_loras: false,
            },
        }
    }

    /// The card the prompt asks for: `[T, 3, h, w]` in [-1, 1].
    fn card(prompt: &str, t: i64, h: i64, w: i64, dev: tch::Device) -> Result<Tensor> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        prompt.to_lowercase().hash(&mut hasher);
        let bits = hasher.finish();
        let hue = (bits % 360) as f64 / 360.0 * std::f64::consts::TAU;
        let opts = (Kind::Float, dev);
        let ys = Tensor::f_linspace(-1.0, 1.0, h, opts)?.f_view([1, 1, h, 1])?;
        let xs = Tensor::f_linspace(-1.0, 1.0, w, opts)?.f_view([1, 1, 1, w])?;
        let ts = Tensor::f_linspace(0.0, 1.0, t, opts)?.f_view([t, 1, 1, 1])?;
        let phase = (&xs + &ys * 0.5 + &ts * 2.0) * std::f64::consts::PI;
        let channels: Vec<Tensor> =
            (0..3).map(|c| (&phase + hue + c as f64 * std::f64::consts::TAU / 3.0).sin() * 0.8).collect();
        Ok(Tensor::f_cat(&channels, 1)?)
    }
}

impl Default for TestCard {
    fn default() -> Self {
        Self::new()
    }
}

impl Model for TestCard {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn memory_estimate(&self, p: &Params, _: Device) -> u64 {
        // Latents, target and a step's temporaries (f32), plus the decoded RGB8 video and its f32 staging.
        let latent = p.num_frames as u64 * 3 * (p.width as u64 / 4) * (p.height as u64 / 4) * 4;
        let video = p.num_frames as u64 * 3 * p.width as u64 * p.height as u64;
        latent * 6 + video * 5
    }

    fn generate(&self, p: &Params, attempt: &mut Attempt<'_>) -> Result<Video> {
        let dev = attempt.device().to_tch();
        let (t, h, w) = (p.num_frames as i64, p.height as i64 / SCALE, p.width as i64 / SCALE);
        attempt.stage(Stage::EncodingPrompt)?;
        let mut target = Self::card(&p.prompt, t, h, w, dev)?;
        if let Some(image) = &p.image {
            // [H, W, 3] RGB8 → [1, 3, h, w] in [-1, 1], the latent grid's size.
            let rgb = Tensor::from_slice(&image.rgb)
                .f_view([1, image.height as i64, image.width as i64, 3])?
                .f_permute([0, 3, 1, 2])?
                .f_to_kind(Kind::Float)?
                .f_to_device(dev)?;
            let small = (rgb / 127.5 - 1.0).f_upsample_bilinear2d([h, w], false, None, None)?;
            // Frame 0 is the image; the card takes over linearly by the last frame.
            let card = Tensor::f_linspace(0.0, 1.0, t, (Kind::Float, dev))?.f_view([t, 1, 1, 1])?;
            target = &target * &card + small * (card.ones_like() - &card);
        }

        attempt.stage(Stage::Generating)?;
        let generator_seed = p.seed as i64 & i64::MAX;
        let noise = super::seeded_noise(generator_seed, &[t, 3, h, w])?.f_to_device(dev)?;
        let smooth = (Tensor::f_ones([3, 1, 3, 3], (Kind::Float, dev))? / 9.0).f_contiguous()?;
        let mut x = noise;
        for i in 1..=p.steps {
            // Flow matching from noise (σ = 1) to the card (σ = 0): x ← x + (card − x) / (steps left).
            let velocity = (&target - &x) / (p.steps - i + 1) as f64;
            let blurred = x.f_conv2d(&smooth, None::<Tensor>, [1, 1], [1, 1], [1, 1], 3)?;
            x = &blurred * 0.1 + &x * 0.9 + velocity;
            if attempt.wants_preview(i) {
                attempt.preview(i, Frames::from_tensor(&x, true)?);
            }
            attempt.step(i, p.steps)?;
        }

        attempt.stage(Stage::Decoding)?;
        let chunk = if attempt.degraded() { 1 } else { CHUNK };
        let mut frames = Vec::with_capacity((t * p.height as i64 * p.width as i64 * 3) as usize);
        let chunks = (t + chunk - 1) / chunk;
        for c in 0..chunks {
            let part = x.f_narrow(0, c * chunk, chunk.min(t - c * chunk))?;
            let rgb = part.f_upsample_bilinear2d([p.height as i64, p.width as i64], false, None, None)?;
            frames.extend_from_slice(Frames::from_tensor(&rgb, true)?.data());
            attempt.chunk(c as u32 + 1, chunks as u32)?;
        }
        attempt.stage(Stage::Finalizing)?;
        let frames = Frames::new(t as usize, p.height as usize, p.width as usize, frames)?;
        Ok(Video { frames: Arc::new(frames), fps: p.fps, metadata: Default::default() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Limits, Request};

    fn params(prompt: &str, seed: u64) -> Params {
        let r = Request { seed: Some(seed), num_frames: Some(5), steps: Some(4), ..Request::new(prompt) };
        crate::engine::validate_request(&r, TestCard::new().info(), &Limits::default(), || 0).unwrap()
    }

    #[test]
    fn same_prompt_and_seed_give_the_same_video_and_others_differ() {
        let m = TestCard::new();
        let run = |p: &Params| m.generate(p, &mut Attempt::detached(Device::Cpu)).unwrap();
        let a = run(&params("a red circle", 1));
        let b = run(&params("a red circle", 1));
        let c = run(&params("a red circle", 2));
        let d = run(&params("a blue square", 1));
        assert_eq!(a.frames, b.frames);
        assert_ne!(a.frames, c.frames);
        assert_ne!(a.frames, d.frames);
        assert_eq!((a.frames.num_frames, a.frames.height, a.frames.width), (5, 64, 64));
    }

    #[test]
    fn denoising_converges_to_the_card() {
        // With more steps the result is closer to the noiseless card: the computation is real.
        let m = TestCard::new();
        let mut p = params("x", 3);
        let mut distance = |steps: u32| {
            p.steps = steps;
            let v = m.generate(&p, &mut Attempt::detached(Device::Cpu)).unwrap();
            let card = TestCard::card("x", 5, 16, 16, tch::Device::Cpu).unwrap();
            let card = card.upsample_bilinear2d([64, 64], false, None, None);
            let card = Frames::from_tensor(&card, true).unwrap();
            v.frames.data().iter().zip(card.data()).map(|(a, b)| (*a as f64 - *b as f64).abs()).sum::<f64>()
        };
        let (few, many) = (distance(1), distance(16));
        assert!(many < few, "{many} !< {few}");
    }
}
