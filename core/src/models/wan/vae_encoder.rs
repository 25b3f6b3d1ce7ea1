//! The `AutoencoderKLWan` encoder (diffusers 0.42.1, `WanEncoder3d` and `AutoencoderKLWan._encode`): frames to
//! latents, 4× in time and 8× in space, for image conditioning (an image is a one-frame video).
//!
//! Like the decoder it runs chunk by chunk with a feature cache: the first chunk is the first frame alone and
//! gives one latent frame, each later chunk is 4 frames and gives one more. A temporal downsampler passes the
//! first chunk through and keeps it; from then on it convolves the previous chunk's last frame with the new ones,
//! stride 2 in time. The latent is the posterior's mode: the first `z_dim` channels of `quant_conv`'s output, as
//! the pipelines take it (`retrieve_latents(..., sample_mode="argmax")`).
//!
//! The Wan2.2 VAE (`is_residual`, `patch_size` 2) first folds each 2×2 patch of pixels into 12 channels, and its
//! down blocks add a parameter-free shortcut from their input (`AvgDown3D`: groups of channels of each 2×2 (×2 in
//! time) block averaged into the next level's channels), so it compresses 16× in space.

use super::vae::{CausalConv3d, FeatureCache, FrameAttention, Residual, RmsNorm, Slot, VaeConfig, patchify};
use crate::error::{Error, Result};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// 2× spatial downsampling (pad right and bottom by one, then a 3×3 conv of stride 2), and for `temporal` also 2×
/// in time through a causal conv of stride 2.
struct Downsample {
    conv: nn::Conv2D,
    time_conv: Option<nn::Conv<[i64; 3]>>,
}

impl Downsample {
    fn new(vs: nn::Path, dim: i64, temporal: bool) -> Self {
        let c = nn::ConvConfig { stride: 2, ..Default::default() };
        Self {
            conv: nn::conv2d(&vs / "resample" / "1", dim, dim, 3, c),
            time_conv: temporal
                .then(|| nn::conv(&vs / "time_conv", dim, dim, [3, 1, 1], super::conv3d_config([2, 1, 1]))),
        }
    }

    fn forward(&self, x: &Tensor, cache: &mut FeatureCache) -> Tensor {
        let [b, c, t, h, w] = x.size()[..] else { unreachable!("5-D by construction") };
        let frames = x.permute([0, 2, 1, 3, 4]).reshape([b * t, c, h, w]);
        let out = self.conv.forward(&frames.constant_pad_nd([0, 1, 0, 1]));
        let (h2, w2) = (out.size()[2], out.size()[3]);
        let x = out.view([b, t, c, h2, w2]).permute([0, 2, 1, 3, 4]);
        let Some(time_conv) = &self.time_conv else { return x };
        let (i, slot) = cache.take();
        match slot {
            // The first chunk passes through (one frame gives one latent frame) and is kept.
            Slot::Empty | Slot::Seen => {
                cache.put(i, Slot::Frames(x.copy()));
                x
            }
            Slot::Frames(prev) => {
                let keep = x.narrow(2, t - 1, 1).copy();
                let joined = Tensor::cat(&[prev.narrow(2, prev.size()[2] - 1, 1), x], 2);
                cache.put(i, Slot::Frames(keep));
                joined.apply(time_conv)
            }
        }
    }
}

/// `AvgDown3D`: the Wan2.2 down block's shortcut. Frames are padded in front to a multiple of `time`, each
/// `time`×2×2 block (or 1×1×1 on the last level) becomes channels, and groups of them are averaged to `out`.
struct AvgDown {
    out: i64,
    time: i64,
    space: i64,
}

impl AvgDown {
    fn forward(&self, x: &Tensor) -> Tensor {
        let (ft, fs) = (self.time, self.space);
        let t0 = x.size()[2];
        let x = x.constant_pad_nd([0, 0, 0, 0, (ft - t0 % ft) % ft, 0]);
        let [b, c, t, h, w] = x.size()[..] else { unreachable!("5-D by construction") };
        let x = x.view(&[b, c, t / ft, ft, h / fs, fs, w / fs, fs][..]).permute([0, 1, 3, 5, 7, 2, 4, 6]);
        let group = c * ft * fs * fs / self.out;
        x.reshape([b, self.out, group, t / ft, h / fs, w / fs]).mean_dim(2, false, x.kind())
    }
}

/// A Wan2.2 down block: residual blocks, a downsampler (but on the last level), plus the shortcut of its input.
struct ResidualDown {
    resnets: Vec<Residual>,
    downsample: Option<Downsample>,
    shortcut: AvgDown,
}

impl ResidualDown {
    fn forward(&self, x: &Tensor, cache: &mut FeatureCache) -> Tensor {
        let mut h = x.shallow_clone();
        for r in &self.resnets {
            h = r.forward(&h, cache);
        }
        if let Some(d) = &self.downsample {
            h = d.forward(&h, cache);
        }
        h + self.shortcut.forward(x)
    }
}

/// The encoder's `down_blocks`, one flat list as diffusers numbers them for Wan2.1 (no attention: `attn_scales` is
/// empty in every Wan VAE, and refused otherwise), or one block per level for Wan2.2.
enum Layer {
    Residual(Box<Residual>),
    Downsample(Box<Downsample>),
    ResidualDown(Box<ResidualDown>),
}

pub struct WanVaeEncoder {
    pub config: VaeConfig,
    conv_in: CausalConv3d,
    down: Vec<Layer>,
    mid_resnets: [Residual; 2],
    mid_attention: FrameAttention,
    norm_out: RmsNorm,
    conv_out: CausalConv3d,
    quant_conv: CausalConv3d,
    mean: Tensor,
    std: Tensor,
}

impl WanVaeEncoder {
    /// Builds the encoder and `quant_conv` under `vs` (the VAE's root, so paths read `encoder.conv_in`).
    pub fn new(vs: nn::Path, config: VaeConfig) -> Result<Self> {
        config.check()?;
        let z = config.z_dim;
        let dim = config.base_dim;
        let mut dims = vec![dim];
        dims.extend(config.dim_mult.iter().map(|m| dim * m));
        let e = &vs / "encoder";
        let mut down = Vec::new();
        let levels = config.dim_mult.len();
        for i in 0..dims.len() - 1 {
            let (mut cin, cout) = (dims[i], dims[i + 1]);
            if config.is_residual {
                let b = &e / "down_blocks" / i;
                let last = i == levels - 1;
                let temporal = !last && config.temperal_downsample[i];
                let resnets = (0..config.num_res_blocks)
                    .map(|j| Residual::new(&b / "resnets" / j, if j == 0 { cin } else { cout }, cout))
                    .collect();
                let downsample = (!last).then(|| Downsample::new(&b / "downsampler", cout, temporal));
                let shortcut =
                    AvgDown { out: cout, time: if temporal { 2 } else { 1 }, space: if last { 1 } else { 2 } };
                down.push(Layer::ResidualDown(Box::new(ResidualDown { resnets, downsample, shortcut })));
                continue;
            }
            for _ in 0..config.num_res_blocks {
                down.push(Layer::Residual(Box::new(Residual::new(&e / "down_blocks" / down.len(), cin, cout))));
                cin = cout;
            }
            if i != config.dim_mult.len() - 1 {
                let temporal = config.temperal_downsample[i];
                down.push(Layer::Downsample(Box::new(Downsample::new(
                    &e / "down_blocks" / down.len(),
                    cout,
                    temporal,
                ))));
            }
        }
        let last = *dims.last().unwrap_or(&dim);
        let device = vs.device();
        Ok(Self {
            conv_in: CausalConv3d::new(&e / "conv_in", config.in_channels, dims[0], [3, 3, 3], [1, 1, 1]),
            down,
            mid_resnets: [
                Residual::new(&e / "mid_block" / "resnets" / 0, last, last),
                Residual::new(&e / "mid_block" / "resnets" / 1, last, last),
            ],
            mid_attention: FrameAttention::new(&e / "mid_block" / "attentions" / 0, last),
            norm_out: RmsNorm::new(&e / "norm_out", last, false),
            conv_out: CausalConv3d::new(&e / "conv_out", last, 2 * z, [3, 3, 3], [1, 1, 1]),
            quant_conv: CausalConv3d::new(&vs / "quant_conv", 2 * z, 2 * z, [1, 1, 1], [0, 0, 0]),
            mean: Tensor::from_slice(&config.latents_mean).to_kind(Kind::Float).view([1, z, 1, 1, 1]).to_device(device),
            std: Tensor::from_slice(&config.latents_std).to_kind(Kind::Float).view([1, z, 1, 1, 1]).to_device(device),
            config,
        })
    }

    fn encode_chunk(&self, x: &Tensor, cache: &mut FeatureCache) -> Tensor {
        cache.start_chunk();
        let mut x = self.conv_in.forward_cached(x, cache);
        for layer in &self.down {
            x = match layer {
                Layer::Residual(r) => r.forward(&x, cache),
                Layer::Downsample(d) => d.forward(&x, cache),
                Layer::ResidualDown(d) => d.forward(&x, cache),
            };
        }
        x = self.mid_resnets[0].forward(&x, cache);
        x = self.mid_attention.forward(&x);
        x = self.mid_resnets[1].forward(&x, cache);
        let x = self.norm_out.forward(&x).silu();
        self.conv_out.forward_cached(&x, cache)
    }

    /// `quant_conv` of the encoder's output over all chunks: the posterior's moments `[B, 2·z, T, h, w]` for frames
    /// `[B, 3, 1 + 4k, H, W]` in [-1, 1] (H and W multiples of the spatial factor, 8 or 16).
    pub fn moments(&self, frames: &Tensor) -> Result<Tensor> {
        let [_, c, t, h, w] = frames.size()[..] else {
            return Err(Error::invalid(format!("the VAE encodes [B, 3, T, H, W] frames, not {:?}", frames.size())));
        };
        let s = self.config.spatial_factor();
        if c != 3 || (t - 1) % 4 != 0 || h % s != 0 || w % s != 0 {
            return Err(Error::invalid(format!(
                "the VAE encodes 3 channels, 1 + 4k frames, sides that are multiples of {s}; got {:?}",
                frames.size()
            )));
        }
        let frames = patchify(frames, self.config.patch());
        let mut cache = FeatureCache::default();
        let mut chunks = vec![self.encode_chunk(&frames.narrow(2, 0, 1), &mut cache)];
        for start in (1..t).step_by(4) {
            chunks.push(self.encode_chunk(&frames.narrow(2, start, 4), &mut cache));
        }
        Ok(self.quant_conv.forward(&Tensor::cat(&chunks, 2), None))
    }

    /// The posterior's mode (its mean), normalised as the pipelines do: `(mode - latents_mean) / latents_std`.
    pub fn encode(&self, frames: &Tensor) -> Result<Tensor> {
        let mode = self.moments(frames)?.narrow(1, 0, self.config.z_dim);
        Ok((mode - &self.mean) * self.std.reciprocal())
    }
}
