//! The `AutoencoderKLWan` decoder (diffusers 0.42.1, `models/autoencoders/autoencoder_kl_wan.py`): latents to
//! frames, 4× in time and 8× in space (Wan2.1) or 16× (Wan2.2).
//!
//! The Wan2.2 VAE (`is_residual`, `patch_size` 2) differs in three places: each up block adds a parameter-free
//! shortcut from its input (`DupUp3D`: channels repeated, then folded into 2× space and, where the block upsamples
//! in time, 2× time), its upsamplers keep their width instead of halving it, and the decoder makes 12 channels
//! that unpatchify into 2×2 pixels of 3. The first chunk's temporal shortcut drops its first frame, as its
//! upsampler passes the first frame through.
//!
//! It decodes one latent frame at a time. Every causal convolution keeps the last two frames of its input in a
//! feature cache slot, taken from the input before the convolution runs, so that the next chunk sees its past;
//! the first chunk gives 1 frame and each later one 4. Memory therefore does not grow with the video's length, and
//! each chunk of frames can be handed on as soon as it exists. (Chunks of four latent frames measured 12% faster
//! on a 64×64 video but peaked 23% higher; one frame at a time keeps memory lowest, as diffusers does.)

use crate::error::{Error, Result};
use serde::Deserialize;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// `vae/config.json`.
#[derive(Clone, Debug, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "base_dim")]
    pub base_dim: i64,
    #[serde(default)]
    pub decoder_base_dim: Option<i64>,
    #[serde(default = "z_dim")]
    pub z_dim: i64,
    #[serde(default = "dim_mult")]
    pub dim_mult: Vec<i64>,
    #[serde(default = "two")]
    pub num_res_blocks: i64,
    #[serde(default)]
    pub attn_scales: Vec<f64>,
    #[serde(default = "temporal")]
    pub temperal_downsample: Vec<bool>,
    #[serde(default)]
    pub is_residual: bool,
    #[serde(default)]
    pub patch_size: Option<i64>,
    #[serde(default = "three")]
    pub in_channels: i64,
    #[serde(default = "three")]
    pub out_channels: i64,
    #[serde(default)]
    pub scale_factor_spatial: Option<i64>,
    #[serde(default)]
    pub scale_factor_temporal: Option<i64>,
    pub latents_mean: Vec<f64>,
    pub latents_std: Vec<f64>,
}

impl VaeConfig {
    /// Pixels per latent pixel along each side: 2 per downsampling level, times the patch.
    pub fn spatial_factor(&self) -> i64 {
        (1i64 << (self.dim_mult.len().saturating_sub(1)).min(8)) * self.patch()
    }

    /// Frames per latent frame (after the first): 2 per temporal downsampling level.
    pub fn temporal_factor(&self) -> i64 {
        1i64 << self.temperal_downsample.iter().filter(|t| **t).count().min(8)
    }

    /// The side of the square patches the VAE folds into channels (1: none).
    pub fn patch(&self) -> i64 {
        self.patch_size.unwrap_or(1)
    }

    /// What both halves of the VAE refuse: attention scales (no Wan VAE has any), statistics of another length than
    /// `z_dim`, a temporal plan that does not fit `dim_mult`, channels that are not 3 per patch pixel, scale
    /// factors that disagree with the layers, and residual widths the shortcuts cannot fold.
    pub fn check(&self) -> Result<()> {
        if !self.attn_scales.is_empty() {
            return Err(Error::new(crate::ErrorCode::Unsupported, "attn_scales is not supported (Wan2.1 has none)"));
        }
        let z = self.z_dim;
        if self.latents_mean.len() != z as usize || self.latents_std.len() != z as usize {
            return Err(Error::invalid(format!("latents_mean and latents_std must have z_dim = {z} values")));
        }
        if self.dim_mult.is_empty() || self.temperal_downsample.len() + 1 != self.dim_mult.len() {
            return Err(Error::invalid("temperal_downsample must have one value fewer than dim_mult"));
        }
        let p = self.patch();
        if !(1..=8).contains(&p) || self.in_channels != 3 * p * p || self.out_channels != 3 * p * p {
            return Err(Error::invalid(format!(
                "vae: in_channels {} and out_channels {} must be 3 x patch_size² ({})",
                self.in_channels,
                self.out_channels,
                3 * p * p
            )));
        }
        for (name, given, actual) in [
            ("scale_factor_spatial", self.scale_factor_spatial, self.spatial_factor()),
            ("scale_factor_temporal", self.scale_factor_temporal, self.temporal_factor()),
        ] {
            if given.is_some_and(|g| g != actual) {
                return Err(Error::invalid(format!(
                    "vae: {name} {given:?} disagrees with the layers, which give {actual}"
                )));
            }
        }
        if self.is_residual {
            // The shortcuts fold channels into space and time (and back) by whole groups.
            let (enc, dec) =
                (self.dims(self.base_dim, false), self.dims(self.decoder_base_dim.unwrap_or(self.base_dim), true));
            let levels = self.dim_mult.len();
            for i in 0..levels {
                let last = i == levels - 1;
                let down = if last { 1 } else { 4 * if self.temperal_downsample[i] { 2 } else { 1 } };
                let up = if last { 1 } else { 4 * if self.temperal_downsample[levels - 2 - i] { 2 } else { 1 } };
                if enc[i] * down % enc[i + 1] != 0 || (!last && dec[i + 1] * up % dec[i] != 0) {
                    return Err(Error::invalid(
                        "vae: with is_residual, each level's width times its down- or upsampling factor must be a \
                         multiple of the next level's",
                    ));
                }
            }
        }
        Ok(())
    }

    /// The widths level by level: the encoder's `[base, base·m₀, …]`, or the decoder's `[base·m_last, base·m_last,
    /// …, base·m₀]`.
    fn dims(&self, base: i64, decoder: bool) -> Vec<i64> {
        if decoder {
            let mut d = vec![base * self.dim_mult[self.dim_mult.len() - 1]];
            d.extend(self.dim_mult.iter().rev().map(|m| base * m));
            d
        } else {
            let mut d = vec![base];
            d.extend(self.dim_mult.iter().map(|m| base * m));
            d
        }
    }

    /// At least how many parameters the decoder this config describes has (its middle block's four 3×3×3
    /// convolutions and one per resolution level), checked against the weight files before anything is
    /// allocated. It also refuses a dimension that is not positive. Saturates instead of overflowing.
    pub fn min_parameters(&self) -> Result<u64> {
        let base = self.decoder_base_dim.unwrap_or(self.base_dim);
        let [base, z, res, out] = super::positive(
            "vae",
            [
                ("base_dim", base),
                ("z_dim", self.z_dim),
                ("num_res_blocks", self.num_res_blocks + 1),
                ("out_channels", self.out_channels),
            ],
        )?;
        if self.dim_mult.is_empty() || self.dim_mult.len() > 8 || self.dim_mult.iter().any(|m| *m < 1) {
            return Err(Error::invalid("vae config: dim_mult must list 1 to 8 positive multipliers"));
        }
        let widest = base.saturating_mul(*self.dim_mult.iter().max().expect("not empty") as u64);
        let middle = widest.saturating_mul(widest).saturating_mul(4 * 27);
        let levels = self.dim_mult.iter().fold(0u64, |sum, m| {
            let half = base.saturating_mul(*m as u64) / 2;
            sum.saturating_add(half.saturating_mul(half).saturating_mul(27).saturating_mul(res))
        });
        Ok(middle
            .saturating_add(levels)
            .saturating_add(widest.saturating_mul(z.saturating_add(out)).saturating_mul(27)))
    }
}

fn base_dim() -> i64 {
    96
}
fn z_dim() -> i64 {
    16
}
fn dim_mult() -> Vec<i64> {
    vec![1, 2, 4, 4]
}
fn two() -> i64 {
    2
}
fn three() -> i64 {
    3
}
fn temporal() -> Vec<bool> {
    vec![false, true, true]
}

/// The feature cache of one decode: one slot per causal convolution, in call order.
#[derive(Default)]
pub struct FeatureCache {
    slots: Vec<Slot>,
    next: usize,
}

#[derive(Default)]
pub(super) enum Slot {
    #[default]
    Empty,
    /// The temporal upsampler has seen its first chunk (which it passes through without its time conv).
    Seen,
    Frames(Tensor),
}

impl FeatureCache {
    pub(super) fn take(&mut self) -> (usize, Slot) {
        let i = self.next;
        self.next += 1;
        while self.slots.len() <= i {
            self.slots.push(Slot::Empty);
        }
        (i, std::mem::take(&mut self.slots[i]))
    }
    /// Puts `slot` back at index `i` (after a `take`).
    pub(super) fn put(&mut self, i: usize, slot: Slot) {
        self.slots[i] = slot;
    }
    pub(super) fn start_chunk(&mut self) {
        self.next = 0;
    }
}

/// The last `CACHE_T` = 2 frames of `x`, padded in front with the previous slot's last frame when `x` has one.
fn keep_last(x: &Tensor, prev: Option<&Tensor>) -> Tensor {
    let t = x.size()[2];
    let keep = x.narrow(2, (t - 2).max(0), t.min(2)).copy();
    match prev {
        Some(p) if keep.size()[2] < 2 => Tensor::cat(&[p.narrow(2, p.size()[2] - 1, 1), keep], 2),
        _ => keep,
    }
}

pub(super) struct CausalConv3d {
    conv: nn::Conv<[i64; 3]>,
    padding: [i64; 3],
}

impl CausalConv3d {
    pub(super) fn new(vs: nn::Path, cin: i64, cout: i64, kernel: [i64; 3], padding: [i64; 3]) -> Self {
        Self { conv: nn::conv(vs, cin, cout, kernel, super::conv3d_config([1, 1, 1])), padding }
    }

    /// Pads only into the past in time, using the cached frames for as much of that padding as they cover.
    pub(super) fn forward(&self, x: &Tensor, cache: Option<&Tensor>) -> Tensor {
        let [pt, ph, pw] = self.padding;
        let mut front = 2 * pt;
        let x = match cache {
            Some(c) if front > 0 => {
                front -= c.size()[2];
                Tensor::cat(&[c, x], 2)
            }
            _ => x.shallow_clone(),
        };
        convolve(&x.constant_pad_nd([pw, pw, ph, ph, front, 0]), &self.conv)
    }

    /// With the feature cache: reads this conv's slot, and stores the frames the next chunk will need.
    pub(super) fn forward_cached(&self, x: &Tensor, cache: &mut FeatureCache) -> Tensor {
        let (i, slot) = cache.take();
        let prev = match &slot {
            Slot::Frames(t) => Some(t),
            _ => None,
        };
        let keep = keep_last(x, prev);
        let out = self.forward(x, prev);
        cache.slots[i] = Slot::Frames(keep);
        out
    }
}

/// A 3-D convolution without padding (the causal padding is already applied). On the CPU in fp32 it calls oneDNN
/// directly: for a batch of one whose N·C·T·H is small, libtorch's dispatcher picks its unblocked reference kernel
/// (`slow_conv3d`, im2col and a GEMM), a heuristic made for 2-D convolutions. On this decoder's shapes oneDNN is
/// 1.2-4.4× faster (12 channels × 6 × 64 × 64: 2.36 ms → 0.53 ms), with the same result to 1e-5 relative.
fn convolve(x: &Tensor, conv: &nn::Conv<[i64; 3]>) -> Tensor {
    static MKLDNN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if x.device() == tch::Device::Cpu && x.kind() == Kind::Float && *MKLDNN.get_or_init(tch::utils::has_mkldnn) {
        x.mkldnn_convolution(&conv.ws, conv.bs.as_ref(), [0, 0, 0], [1, 1, 1], [1, 1, 1], 1)
    } else {
        x.apply(conv)
    }
}

/// `F.normalize` over channels · √C · γ: an RMS norm without ε inside the root.
pub(super) struct RmsNorm {
    gamma: Tensor,
    scale: f64,
}

impl RmsNorm {
    pub(super) fn new(vs: nn::Path, dim: i64, images: bool) -> Self {
        let shape: &[i64] = if images { &[dim, 1, 1] } else { &[dim, 1, 1, 1] };
        Self { gamma: vs.var("gamma", shape, nn::Init::Const(1.0)), scale: (dim as f64).sqrt() }
    }
    pub(super) fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let xf = if matches!(kind, Kind::Half | Kind::BFloat16) { x.to_kind(Kind::Float) } else { x.shallow_clone() };
        // x / max(‖x‖, 1e-12) as x · rsqrt(max(Σx², 1e-24)): the same value, but libtorch's vector norm reduces
        // over the strided channel dim some 45× slower than a sum of squares does (5 ms against 0.1 ms for
        // 12 channels × 6 × 64 × 64), which made the norms a third of the decode.
        let inverse = xf.square().sum_dim_intlist(1, true, Kind::Float).clamp_min(1e-24).rsqrt();
        (xf * inverse).to_kind(kind) * self.scale * &self.gamma
    }
}

pub(super) struct Residual {
    norm1: RmsNorm,
    conv1: CausalConv3d,
    norm2: RmsNorm,
    conv2: CausalConv3d,
    shortcut: Option<CausalConv3d>,
}

impl Residual {
    pub(super) fn new(vs: nn::Path, cin: i64, cout: i64) -> Self {
        Self {
            norm1: RmsNorm::new(&vs / "norm1", cin, false),
            conv1: CausalConv3d::new(&vs / "conv1", cin, cout, [3, 3, 3], [1, 1, 1]),
            norm2: RmsNorm::new(&vs / "norm2", cout, false),
            conv2: CausalConv3d::new(&vs / "conv2", cout, cout, [3, 3, 3], [1, 1, 1]),
            shortcut: (cin != cout).then(|| CausalConv3d::new(&vs / "conv_shortcut", cin, cout, [1, 1, 1], [0, 0, 0])),
        }
    }
    pub(super) fn forward(&self, x: &Tensor, cache: &mut FeatureCache) -> Tensor {
        let h = match &self.shortcut {
            Some(s) => s.forward(x, None),
            None => x.shallow_clone(),
        };
        let y = self.conv1.forward_cached(&self.norm1.forward(x).silu(), cache);
        let y = self.conv2.forward_cached(&self.norm2.forward(&y).silu(), cache);
        y + h
    }
}

/// Single-head self-attention over each frame's pixels.
pub(super) struct FrameAttention {
    norm: RmsNorm,
    to_qkv: nn::Conv2D,
    proj: nn::Conv2D,
}

impl FrameAttention {
    pub(super) fn new(vs: nn::Path, dim: i64) -> Self {
        Self {
            norm: RmsNorm::new(&vs / "norm", dim, true),
            to_qkv: nn::conv2d(&vs / "to_qkv", dim, 3 * dim, 1, Default::default()),
            proj: nn::conv2d(&vs / "proj", dim, dim, 1, Default::default()),
        }
    }
    pub(super) fn forward(&self, x: &Tensor) -> Tensor {
        let [b, c, t, h, w] = x.size()[..] else { unreachable!("5-D by construction") };
        let frames = x.permute([0, 2, 1, 3, 4]).reshape([b * t, c, h, w]);
        let qkv = self.to_qkv.forward(&self.norm.forward(&frames));
        let qkv = qkv.reshape([b * t, 1, 3 * c, -1]).permute([0, 1, 3, 2]).contiguous();
        let parts = qkv.chunk(3, -1);
        let out = Tensor::scaled_dot_product_attention(
            &parts[0],
            &parts[1],
            &parts[2],
            None::<Tensor>,
            0.0,
            false,
            None,
            false,
        );
        let out = out.squeeze_dim(1).permute([0, 2, 1]).reshape([b * t, c, h, w]);
        let out = self.proj.forward(&out).view([b, t, c, h, w]).permute([0, 2, 1, 3, 4]);
        out + x
    }
}

/// 2× spatial upsampling (nearest, then a 3×3 conv to `out` channels: half of `dim` in Wan2.1, `dim` in Wan2.2),
/// and for `temporal` also 2× in time through a causal conv whose two output halves become even and odd frames.
struct Upsample {
    conv: nn::Conv2D,
    time_conv: Option<CausalConv3d>,
}

impl Upsample {
    fn new(vs: nn::Path, dim: i64, out: i64, temporal: bool) -> Self {
        let c = nn::ConvConfig { padding: 1, ..Default::default() };
        Self {
            conv: nn::conv2d(&vs / "resample" / "1", dim, out, 3, c),
            time_conv: temporal.then(|| CausalConv3d::new(&vs / "time_conv", dim, dim * 2, [3, 1, 1], [1, 0, 0])),
        }
    }
    fn forward(&self, x: &Tensor, cache: &mut FeatureCache) -> Tensor {
        let [b, c, t, h, w] = x.size()[..] else { unreachable!("5-D by construction") };
        let mut x = x.shallow_clone();
        if let Some(time_conv) = &self.time_conv {
            let (i, slot) = cache.take();
            match slot {
                // The first chunk passes through: the first latent frame decodes to one frame.
                Slot::Empty => cache.slots[i] = Slot::Seen,
                Slot::Seen => {
                    let keep = Tensor::cat(&[x.narrow(2, t - 1, 1).zeros_like(), x.narrow(2, t - 1, 1)], 2);
                    let keep = if t >= 2 { x.narrow(2, t - 2, 2).copy() } else { keep };
                    x = time_conv.forward(&x, None);
                    cache.slots[i] = Slot::Frames(keep);
                }
                Slot::Frames(prev) => {
                    let keep = keep_last(&x, Some(&prev));
                    x = time_conv.forward(&x, Some(&prev));
                    cache.slots[i] = Slot::Frames(keep);
                }
            }
            if !matches!(cache.slots[i], Slot::Seen) {
                x = x.reshape([b, 2, c, t, h, w]);
                x = Tensor::stack(&[x.select(1, 0), x.select(1, 1)], 3).reshape([b, c, t * 2, h, w]);
            }
        }
        let t = x.size()[2];
        let frames = x.permute([0, 2, 1, 3, 4]).reshape([b * t, c, h, w]);
        let up =
            frames.to_kind(Kind::Float).upsample_nearest2d([h * 2, w * 2], Some(2.0), Some(2.0)).to_kind(frames.kind());
        let out = self.conv.forward(&up);
        let c2 = out.size()[1];
        out.view([b, t, c2, h * 2, w * 2]).permute([0, 2, 1, 3, 4])
    }
}

/// `DupUp3D`: the Wan2.2 up block's shortcut. Each channel is repeated so that `out` channels × the factors come
/// out, then folded into `time`× frames and 2× pixels each way; the first chunk drops its first `time − 1` frames.
struct DupUp {
    out: i64,
    time: i64,
    repeats: i64,
}

impl DupUp {
    fn new(cin: i64, out: i64, time: i64) -> Self {
        Self { out, time, repeats: out * time * 4 / cin }
    }

    fn forward(&self, x: &Tensor, first_chunk: bool) -> Tensor {
        let [b, _, t, h, w] = x.size()[..] else { unreachable!("5-D by construction") };
        let x = x.repeat_interleave_self_int(self.repeats, Some(1), None);
        let x = x.view(&[b, self.out, self.time, 2, 2, t, h, w][..]).permute([0, 1, 5, 2, 6, 3, 7, 4]);
        let x = x.reshape([b, self.out, t * self.time, h * 2, w * 2]);
        if first_chunk { x.narrow(2, self.time - 1, t * self.time - (self.time - 1)) } else { x }
    }
}

struct UpBlock {
    resnets: Vec<Residual>,
    upsample: Option<Upsample>,
    shortcut: Option<DupUp>,
}

/// `[B, C·p², T, h, w]` → `[B, C, T, h·p, w·p]`, diffusers' `unpatchify` (channel = c·p² + pw·p + ph).
pub fn unpatchify(x: &Tensor, p: i64) -> Tensor {
    if p == 1 {
        return x.shallow_clone();
    }
    let [b, cp, t, h, w] = x.size()[..] else { unreachable!("5-D by construction") };
    x.view(&[b, cp / (p * p), p, p, t, h, w][..]).permute([0, 1, 4, 5, 3, 6, 2]).reshape([
        b,
        cp / (p * p),
        t,
        h * p,
        w * p,
    ])
}

/// `[B, C, T, H, W]` → `[B, C·p², T, H/p, W/p]`, diffusers' `patchify`.
pub fn patchify(x: &Tensor, p: i64) -> Tensor {
    if p == 1 {
        return x.shallow_clone();
    }
    let [b, c, t, h, w] = x.size()[..] else { unreachable!("5-D by construction") };
    x.view(&[b, c, t, h / p, p, w / p, p][..]).permute([0, 1, 6, 4, 2, 3, 5]).reshape([b, c * p * p, t, h / p, w / p])
}

pub struct WanVaeDecoder {
    pub config: VaeConfig,
    post_quant_conv: CausalConv3d,
    conv_in: CausalConv3d,
    mid_resnets: [Residual; 2],
    mid_attention: FrameAttention,
    up_blocks: Vec<UpBlock>,
    norm_out: RmsNorm,
    conv_out: CausalConv3d,
    mean: Tensor,
    std: Tensor,
}

impl WanVaeDecoder {
    /// Builds the decoder and `post_quant_conv` under `vs` (the VAE's root, so paths read `decoder.conv_in`).
    pub fn new(vs: nn::Path, config: VaeConfig) -> Result<Self> {
        config.check()?;
        let z = config.z_dim;
        let dim = config.decoder_base_dim.unwrap_or(config.base_dim);
        let dims = config.dims(dim, true);
        let temporal_up: Vec<bool> = config.temperal_downsample.iter().rev().copied().collect();
        let residual = config.is_residual;
        let d = &vs / "decoder";
        let mut up_blocks = Vec::new();
        for i in 0..dims.len() - 1 {
            let (mut cin, cout) = (dims[i], dims[i + 1]);
            // Wan2.1's upsamplers halve the width they were given; Wan2.2's keep it.
            if i > 0 && !residual {
                cin /= 2;
            }
            let b = &d / "up_blocks" / i;
            let resnets = (0..=config.num_res_blocks)
                .map(|j| Residual::new(&b / "resnets" / j, if j == 0 { cin } else { cout }, cout))
                .collect();
            let up = i != config.dim_mult.len() - 1;
            let temporal = up && temporal_up[i];
            let out = if residual { cout } else { cout / 2 };
            let (path, upsample) = if residual { (&b / "upsampler", up) } else { (&b / "upsamplers" / "0", up) };
            let upsample = upsample.then(|| Upsample::new(path, cout, out, temporal));
            let shortcut = (residual && up).then(|| DupUp::new(cin, cout, if temporal { 2 } else { 1 }));
            up_blocks.push(UpBlock { resnets, upsample, shortcut });
        }
        let last = *dims.last().unwrap_or(&dim);
        let device = vs.device();
        Ok(Self {
            post_quant_conv: CausalConv3d::new(&vs / "post_quant_conv", z, z, [1, 1, 1], [0, 0, 0]),
            conv_in: CausalConv3d::new(&d / "conv_in", z, dims[0], [3, 3, 3], [1, 1, 1]),
            mid_resnets: [
                Residual::new(&d / "mid_block" / "resnets" / 0, dims[0], dims[0]),
                Residual::new(&d / "mid_block" / "resnets" / 1, dims[0], dims[0]),
            ],
            mid_attention: FrameAttention::new(&d / "mid_block" / "attentions" / 0, dims[0]),
            up_blocks,
            norm_out: RmsNorm::new(&d / "norm_out", last, false),
            conv_out: CausalConv3d::new(&d / "conv_out", last, config.out_channels, [3, 3, 3], [1, 1, 1]),
            mean: Tensor::from_slice(&config.latents_mean).to_kind(Kind::Float).view([1, z, 1, 1, 1]).to_device(device),
            std: Tensor::from_slice(&config.latents_std).to_kind(Kind::Float).view([1, z, 1, 1, 1]).to_device(device),
            config,
        })
    }

    /// Undoes the latent normalisation: `latents / (1/std) + mean`, in that order, as the pipeline writes it.
    pub fn denormalize(&self, latents: &Tensor) -> Tensor {
        (latents / self.std.reciprocal() + &self.mean).to_kind(latents.kind())
    }

    /// `post_quant_conv` over all latent frames.
    pub fn post_quant(&self, z: &Tensor) -> Tensor {
        self.post_quant_conv.forward(z, None)
    }

    /// Decodes one chunk of latent frames `[B, z, t, h, w]` (already through `post_quant`), carrying `cache`
    /// across calls. Returns the decoder's raw output (unclamped, and still in patches for Wan2.2): the first chunk
    /// must be one latent frame and gives 1 frame; each later chunk gives 4 frames per latent frame.
    pub fn decode_chunk(&self, z: &Tensor, cache: &mut FeatureCache) -> Tensor {
        let first_chunk = cache.slots.is_empty();
        cache.start_chunk();
        let mut x = self.conv_in.forward_cached(z, cache);
        x = self.mid_resnets[0].forward(&x, cache);
        x = self.mid_attention.forward(&x);
        x = self.mid_resnets[1].forward(&x, cache);
        for block in &self.up_blocks {
            let input = block.shortcut.as_ref().map(|_| x.shallow_clone());
            for r in &block.resnets {
                x = r.forward(&x, cache);
            }
            if let Some(u) = &block.upsample {
                x = u.forward(&x, cache);
            }
            if let (Some(shortcut), Some(input)) = (&block.shortcut, input) {
                x += shortcut.forward(&input, first_chunk);
            }
        }
        let x = self.norm_out.forward(&x).silu();
        self.conv_out.forward_cached(&x, cache)
    }

    /// Decodes normalised-away latents `[B, z, T, h, w]` one latent frame at a time, calling
    /// `on_chunk(i, T, frames)` with each chunk of frames in [-1, 1] (clamped) as soon as it exists.
    pub fn decode(&self, z: &Tensor, mut on_chunk: impl FnMut(usize, usize, Tensor) -> Result<()>) -> Result<()> {
        let x = self.post_quant(z);
        let t = x.size()[2];
        let mut cache = FeatureCache::default();
        for i in 0..t {
            let out = unpatchify(&self.decode_chunk(&x.narrow(2, i, 1), &mut cache), self.config.patch());
            on_chunk(i as usize, t as usize, out.clamp(-1.0, 1.0))?;
        }
        Ok(())
    }
}
