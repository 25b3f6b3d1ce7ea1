//! A generated video: RGB8 frames and what is known about how they were made.

use crate::device::Device;
use std::collections::BTreeMap;

/// RGB8 frames, `[T, H, W, 3]`, contiguous, row-major. Immutable once made, so it is shared by `Arc` with the
/// host (Python exposes it as a numpy array without a copy).
#[derive(Clone, Debug, PartialEq)]
pub struct Frames {
    pub num_frames: usize,
    pub height: usize,
    pub width: usize,
    data: Vec<u8>,
}

impl Frames {
    /// No frames at all: what a preview read back from another node's event log carries (previews stay on the
    /// worker that made them).
    pub fn none() -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self { num_frames: 0, height: 0, width: 0, data: Vec::new() })
    }

    /// Wraps pixel data. Errors if the length is not `T·H·W·3`.
    pub fn new(num_frames: usize, height: usize, width: usize, data: Vec<u8>) -> crate::Result<Self> {
        let expected = num_frames * height * width * 3;
        if data.len() != expected {
            return Err(crate::Error::internal(format!(
                "frames of {num_frames}x{height}x{width}x3 need {expected} bytes, got {}",
                data.len()
            )));
        }
        Ok(Self { num_frames, height, width, data })
    }

    /// The pixels, `[T, H, W, 3]`.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// One frame's pixels, `[H, W, 3]`.
    pub fn frame(&self, t: usize) -> &[u8] {
        let n = self.height * self.width * 3;
        &self.data[t * n..(t + 1) * n]
    }

    /// Size in bytes.
    pub fn byte_len(&self) -> usize {
        self.data.len()
    }

    /// Converts a `[T, 3, H, W]` or `[T, H, W, 3]`-able float tensor in [-1, 1] into frames. `channels_first` says
    /// which layout the tensor has.
    pub fn from_tensor(t: &tch::Tensor, channels_first: bool) -> crate::Result<Self> {
        let t = if channels_first { t.f_permute([0, 2, 3, 1])? } else { t.shallow_clone() };
        let size = t.size();
        if size.len() != 4 || size[3] != 3 {
            return Err(crate::Error::internal(format!("expected [T, H, W, 3] frames, got {size:?}")));
        }
        let bytes = ((t.f_clamp(-1.0, 1.0)? + 1.0) * 127.5)
            .f_round()?
            .f_to_kind(tch::Kind::Uint8)?
            .f_to_device(tch::Device::Cpu)?
            .f_contiguous()?;
        let len = bytes.numel();
        let mut data = vec![0u8; len];
        bytes.f_copy_data_u8(&mut data, len)?;
        Self::new(size[0] as usize, size[1] as usize, size[2] as usize, data)
    }
}

/// Time spent in each stage of a job, in milliseconds.
pub type StageTimings = BTreeMap<String, f64>;

/// What is known about how a video was made.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct VideoMetadata {
    pub prompt: String,
    pub seed: u64,
    pub model: String,
    pub weights_hash: String,
    pub device: String,
    pub dtype: String,
    pub width: u32,
    pub height: u32,
    pub num_frames: u32,
    pub steps: u32,
    pub guidance_scale: f64,
    /// Milliseconds per stage, by stage name.
    pub timings_ms: StageTimings,
    /// The process's resident memory (RSS), in bytes: the highest seen at the attempt's stage and step
    /// boundaries. It is the whole process's, shared by the jobs running at the same time and including the
    /// weights, so it is an upper bound on this job's own memory, on every device. (A job's own CUDA peak, from
    /// the caching allocator's statistics, is not measured yet.)
    pub peak_rss_bytes: u64,
    /// libtorch's intra-op threads the job ran with on the CPU (`EngineConfig::cpu_threads`, else one per core);
    /// 0 on a GPU.
    pub cpu_threads: u32,
    /// The denoising steps (1-based) at which the step cache reused the transformer blocks' last residual instead
    /// of running them (`step_cache` in the request); empty without it.
    pub steps_skipped: Vec<u32>,
    /// A storyboard's parts, in order (see `engine::storyboard`); empty for a video made in one piece.
    pub segments: Vec<crate::engine::SegmentRecord>,
    pub attempts: u32,
    pub cache_hit: bool,
}

/// A finished video.
#[derive(Clone, Debug, PartialEq)]
pub struct Video {
    /// Shared, so that a cache hit or a host's view of the pixels never copies them.
    pub frames: std::sync::Arc<Frames>,
    pub fps: f64,
    pub metadata: VideoMetadata,
}

impl Video {
    pub fn device(&self) -> Option<Device> {
        self.metadata.device.parse().ok()
    }
}
