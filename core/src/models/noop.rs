//! `noop`: a model that does no work, so that benchmarks measure the engine alone. It reports its steps like
//! any model and returns black frames.

use super::{Defaults, Model, ModelInfo};
use crate::device::Device;
use crate::engine::{Attempt, FrameRule, Params, Stage};
use crate::error::Result;
use crate::video::{Frames, Video};
use std::sync::Arc;

pub const NAME: &str = "noop";

pub struct NoOp {
    info: ModelInfo,
}

impl NoOp {
    pub fn new() -> Self {
        Self {
            info: ModelInfo {
                name: NAME.into(),
                weights_hash: "none".into(),
                defaults: Defaults {
                    width: 16,
                    height: 16,
                    num_frames: 1,
                    fps: 8.0,
                    steps: 1,
                    guidance_scale: 1.0,
                    guidance_scale_2: None,
                    sampler: None,
                },
                size_multiple: 16,
                frame_rule: FrameRule::Any,
                dtype: "none".into(),
                conditioning: Default::default(),
                takes_loras: false,
            },
        }
    }
}

impl Default for NoOp {
    fn default() -> Self {
        Self::new()
    }
}

impl Model for NoOp {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn memory_estimate(&self, p: &Params, _: Device) -> u64 {
        p.width as u64 * p.height as u64 * p.num_frames as u64 * 3
    }

    fn generate(&self, p: &Params, attempt: &mut Attempt<'_>) -> Result<Video> {
        attempt.stage(Stage::Generating)?;
        for i in 1..=p.steps {
            attempt.step(i, p.steps)?;
        }
        let (t, h, w) = (p.num_frames as usize, p.height as usize, p.width as usize);
        let frames = Frames::new(t, h, w, vec![0; t * h * w * 3])?;
        Ok(Video { frames: Arc::new(frames), fps: p.fps, metadata: Default::default() })
    }
}
