//! `WanTransformer3DModel`: the Wan2.1 diffusion transformer (diffusers 0.42.1,
//! `models/transformers/transformer_wan.py`).
//!
//! Patchify with a Conv3d, then blocks of self-attention (RMS norm across heads on q and k, 3D RoPE), cross-
//! attention to the text and a GELU-tanh FFN, each modulated by the timestep (shift, scale, gate), then an output
//! modulation and unpatchify. The norms and the modulation run in fp32 whatever the weights' dtype, as diffusers
//! keeps them. Module paths spell the checkpoint keys (`blocks.{i}.attn1.to_q`, ...), so loading is a lookup.

use crate::error::{Error, Result};
use crate::models::linear::Linear;
use crate::models::offload::BlockOffload;
use crate::models::weights::Storage;
use serde::Deserialize;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// `transformer/config.json`. Defaults are the constructor's (the 14B model); real folders name every value.
#[derive(Clone, Debug, Deserialize)]
pub struct TransformerConfig {
    #[serde(default = "patch")]
    pub patch_size: [i64; 3],
    #[serde(default = "forty")]
    pub num_attention_heads: i64,
    #[serde(default = "head_dim")]
    pub attention_head_dim: i64,
    #[serde(default = "sixteen")]
    pub in_channels: i64,
    #[serde(default = "sixteen")]
    pub out_channels: i64,
    #[serde(default = "text_dim")]
    pub text_dim: i64,
    #[serde(default = "freq_dim")]
    pub freq_dim: i64,
    #[serde(default = "ffn_dim")]
    pub ffn_dim: i64,
    #[serde(default = "forty")]
    pub num_layers: i64,
    #[serde(default = "yes")]
    pub cross_attn_norm: bool,
    #[serde(default = "rms")]
    pub qk_norm: Option<String>,
    #[serde(default = "eps")]
    pub eps: f64,
    #[serde(default)]
    pub image_dim: Option<i64>,
    #[serde(default)]
    pub added_kv_proj_dim: Option<i64>,
    #[serde(default = "rope_len")]
    pub rope_max_seq_len: i64,
    #[serde(default)]
    pub pos_embed_seq_len: Option<i64>,
}

fn patch() -> [i64; 3] {
    [1, 2, 2]
}
fn forty() -> i64 {
    40
}
fn head_dim() -> i64 {
    128
}
fn sixteen() -> i64 {
    16
}
fn text_dim() -> i64 {
    4096
}
fn freq_dim() -> i64 {
    256
}
fn ffn_dim() -> i64 {
    13824
}
fn yes() -> bool {
    true
}
fn rms() -> Option<String> {
    Some("rms_norm_across_heads".into())
}
fn eps() -> f64 {
    1e-6
}
fn rope_len() -> i64 {
    1024
}

impl TransformerConfig {
    pub fn inner_dim(&self) -> i64 {
        self.num_attention_heads * self.attention_head_dim
    }

    /// At least how many parameters this config describes (the attention and feed-forward matrices and the
    /// embeddings, without biases or norms), checked against the weight files before anything is allocated. It
    /// also refuses a dimension that is not positive. Saturates instead of overflowing.
    pub fn min_parameters(&self) -> Result<u64> {
        let dims = [
            ("num_attention_heads", self.num_attention_heads),
            ("attention_head_dim", self.attention_head_dim),
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("text_dim", self.text_dim),
            ("freq_dim", self.freq_dim),
            ("ffn_dim", self.ffn_dim),
            ("num_layers", self.num_layers),
        ];
        let [heads, head_dim, in_ch, out_ch, text, freq, ffn, layers] = super::positive("transformer", dims)?;
        let patch = self.patch_size.iter().map(|p| (*p).max(1) as u64).fold(1u64, u64::saturating_mul);
        let inner = heads.saturating_mul(head_dim);
        let per_block =
            inner.saturating_mul(inner).saturating_mul(8).saturating_add(inner.saturating_mul(ffn).saturating_mul(2));
        Ok(layers
            .saturating_mul(per_block)
            .saturating_add(inner.saturating_mul(in_ch.saturating_add(out_ch)).saturating_mul(patch))
            .saturating_add(inner.saturating_mul(text.saturating_add(freq)))
            .saturating_add(inner.saturating_mul(inner).saturating_mul(8)))
    }

    pub fn check(&self) -> Result<()> {
        // Wan2.1 image-to-video: the CLIP tokens are embedded to the model's width (image_dim → inner dim), and
        // every block's cross-attention projects them to keys and values of that width (added_kv_proj_dim).
        match (self.image_dim, self.added_kv_proj_dim) {
            (None, None) => {
                if self.pos_embed_seq_len.is_some() {
                    return Err(Error::invalid("pos_embed_seq_len needs image_dim (it embeds CLIP tokens)"));
                }
            }
            (Some(image_dim), Some(kv)) => {
                if image_dim < 1 || kv != self.inner_dim() {
                    return Err(Error::invalid(format!(
                        "image_dim {image_dim} must be positive and added_kv_proj_dim {kv} the model's width {} \
                         (num_attention_heads x attention_head_dim)",
                        self.inner_dim()
                    )));
                }
                if self.pos_embed_seq_len.is_some_and(|n| n < 2 || n % 2 != 0) {
                    return Err(Error::invalid("pos_embed_seq_len must be an even number (two images' tokens)"));
                }
            }
            _ => {
                return Err(Error::invalid(
                    "image_dim and added_kv_proj_dim come together (image-to-video) or not at all",
                ));
            }
        }
        if self.qk_norm.as_deref() != Some("rms_norm_across_heads") {
            return Err(Error::invalid(format!(
                "qk_norm {:?} is not supported; Wan2.1 uses rms_norm_across_heads",
                self.qk_norm
            )));
        }
        if self.attention_head_dim % 2 != 0 || self.attention_head_dim < 6 {
            return Err(Error::invalid("attention_head_dim must be even and at least 6 for the 3D RoPE"));
        }
        if self.patch_size.iter().any(|p| *p < 1) || self.num_layers < 1 || self.num_attention_heads < 1 {
            return Err(Error::invalid("patch_size, num_layers and num_attention_heads must be positive"));
        }
        Ok(())
    }
}

/// RMS norm with a learned scale, in the input's dtype (torch.nn.RMSNorm).
#[derive(Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(vs: nn::Path, dim: i64, eps: f64) -> Self {
        Self { weight: vs.var("weight", &[dim], nn::Init::Const(1.0)), eps }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let rms = (x.pow_tensor_scalar(2).mean_dim(-1, true, x.kind()) + self.eps).rsqrt();
        x * rms * &self.weight
    }
}

/// LayerNorm computed in fp32 (diffusers' FP32LayerNorm), with or without an affine.
#[derive(Debug)]
pub struct Fp32LayerNorm {
    affine: Option<(Tensor, Tensor)>,
    dim: i64,
    eps: f64,
}

impl Fp32LayerNorm {
    pub fn new(vs: nn::Path, dim: i64, eps: f64, affine: bool) -> Self {
        let affine = affine
            .then(|| (vs.var("weight", &[dim], nn::Init::Const(1.0)), vs.var("bias", &[dim], nn::Init::Const(0.0))));
        Self { affine, dim, eps }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let (w, b) = match &self.affine {
            Some((w, b)) => (Some(w.to_kind(Kind::Float)), Some(b.to_kind(Kind::Float))),
            None => (None, None),
        };
        x.to_kind(Kind::Float).layer_norm([self.dim], w.as_ref(), b.as_ref(), self.eps, false)
    }
}

/// The timestep sinusoid: `[cos | sin]` of `t · exp(−ln(10⁴) · i / half)`, in fp32.
pub fn timestep_sinusoid(t: &Tensor, dim: i64) -> Tensor {
    let half = dim / 2;
    let exponent = Tensor::arange(half, (Kind::Float, t.device())) * (-(10000f64.ln())) / half as f64;
    let freqs = exponent.exp();
    let args = t.to_kind(Kind::Float).unsqueeze(1) * freqs.unsqueeze(0);
    Tensor::cat(&[args.cos(), args.sin()], 1)
}

/// 3D rotary position embedding: the head dim splits into time, height and width parts.
#[derive(Debug)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
    split: [i64; 3],
    patch: [i64; 3],
}

impl Rope {
    pub fn new(head_dim: i64, patch: [i64; 3], max_len: i64, device: tch::Device) -> Self {
        let h = 2 * (head_dim / 6);
        let split = [head_dim - 2 * h, h, h];
        let mut cos = Vec::new();
        let mut sin = Vec::new();
        for dim in split {
            // In float64, as diffusers computes them, then to f32; each frequency repeated for its (even, odd) pair.
            let opts = (Kind::Double, tch::Device::Cpu);
            let inv: Vec<f64> = (0..dim / 2).map(|i| 1.0 / 10000f64.powf((2 * i) as f64 / dim as f64)).collect();
            let inv = Tensor::from_slice(&inv);
            let pos = Tensor::arange(max_len, opts);
            let freqs = pos.outer(&inv);
            cos.push(freqs.cos().repeat_interleave_self_int(2, Some(1), None).to_kind(Kind::Float));
            sin.push(freqs.sin().repeat_interleave_self_int(2, Some(1), None).to_kind(Kind::Float));
        }
        Self { cos: Tensor::cat(&cos, 1).to_device(device), sin: Tensor::cat(&sin, 1).to_device(device), split, patch }
    }

    /// cos and sin for a latent of `frames × height × width`, each `[1, tokens, 1, head_dim]`, tokens in
    /// (f, h, w) row-major order.
    pub fn forward(&self, frames: i64, height: i64, width: i64) -> (Tensor, Tensor) {
        let (f, h, w) = (frames / self.patch[0], height / self.patch[1], width / self.patch[2]);
        let grid = |table: &Tensor| {
            let parts = table.split_with_sizes(self.split, 1);
            let ft = parts[0].slice(0, 0, f, 1).view([f, 1, 1, -1]).expand([f, h, w, -1], false);
            let ht = parts[1].slice(0, 0, h, 1).view([1, h, 1, -1]).expand([f, h, w, -1], false);
            let wt = parts[2].slice(0, 0, w, 1).view([1, 1, w, -1]).expand([f, h, w, -1], false);
            Tensor::cat(&[ft, ht, wt], -1).reshape([1, f * h * w, 1, -1])
        };
        (grid(&self.cos), grid(&self.sin))
    }
}

/// Rotates interleaved (even, odd) pairs of `x` `[B, S, heads, D]`.
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let d = x.size()[3];
    let pairs = x.unflatten(-1, [d / 2, 2]);
    let (x1, x2) = (pairs.select(-1, 0), pairs.select(-1, 1));
    let cos = cos.slice(-1, 0, d, 2);
    let sin = sin.slice(-1, 1, d, 2);
    let even = &x1 * &cos - &x2 * &sin;
    let odd = &x1 * &sin + &x2 * &cos;
    Tensor::stack(&[even, odd], -1).flatten(-2, -1).to_kind(x.kind())
}

#[derive(Debug)]
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    norm_q: RmsNorm,
    norm_k: RmsNorm,
    /// Image-to-video's second context: keys and values of the embedded CLIP tokens (`add_k_proj`, `add_v_proj`,
    /// keys normed by `norm_added_k`), attended with the same queries and added to the text's result.
    added: Option<(Linear, Linear, RmsNorm)>,
    heads: i64,
}

impl Attention {
    pub fn new(vs: nn::Path, dim: i64, heads: i64, eps: f64, added_kv: bool, s: &Storage) -> Self {
        Self {
            to_q: Linear::new(&vs / "to_q", dim, dim, true, s),
            to_k: Linear::new(&vs / "to_k", dim, dim, true, s),
            to_v: Linear::new(&vs / "to_v", dim, dim, true, s),
            to_out: Linear::new(&vs / "to_out" / "0", dim, dim, true, s),
            norm_q: RmsNorm::new(&vs / "norm_q", dim, eps),
            norm_k: RmsNorm::new(&vs / "norm_k", dim, eps),
            added: added_kv.then(|| {
                (
                    Linear::new(&vs / "add_k_proj", dim, dim, true, s),
                    Linear::new(&vs / "add_v_proj", dim, dim, true, s),
                    RmsNorm::new(&vs / "norm_added_k", dim, eps),
                )
            }),
            heads,
        }
    }

    /// Self-attention of `x` `[B, S, dim]`, with RoPE on q and k.
    pub fn forward_self(&self, x: &Tensor, rope: (&Tensor, &Tensor)) -> Tensor {
        let q = apply_rope(&self.query(x), rope.0, rope.1);
        let k = apply_rope(&self.key(x), rope.0, rope.1);
        self.attend(x.kind(), &q, &k.transpose(1, 2), &self.value(x).transpose(1, 2), None)
    }

    /// Attention of `x` `[B, S, dim]` to prepared keys and values (see [`TextContext`]), with an additive bias on
    /// the logits, `[B, 1, 1, L]`, when given; plus, for image-to-video, attention to the image's keys and values
    /// with the same queries, summed before the output projection.
    pub fn forward_cross(
        &self,
        x: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: Option<&Tensor>,
        image: Option<&(Tensor, Tensor)>,
    ) -> Tensor {
        let q = self.query(x).transpose(1, 2);
        let mut out = Tensor::scaled_dot_product_attention(&q, k, v, bias, 0.0, false, None, false);
        if let Some((ki, vi)) = image {
            out += Tensor::scaled_dot_product_attention(&q, ki, vi, None::<&Tensor>, 0.0, false, None, false);
        }
        self.to_out.forward(&out.transpose(1, 2).flatten(2, 3).to_kind(x.kind()))
    }

    /// k and v of the embedded image tokens `[B, N, dim]` through the added projections, each `[B, heads, N, D]`;
    /// `None` for a block without them.
    pub fn image_keys_values(&self, image: &Tensor) -> Option<(Tensor, Tensor)> {
        let (add_k, add_v, norm) = self.added.as_ref()?;
        let k = norm.forward(&add_k.forward(image)).unflatten(2, [self.heads, -1]).transpose(1, 2);
        let v = add_v.forward(image).unflatten(2, [self.heads, -1]).transpose(1, 2);
        Some((k, v))
    }

    /// q `[B, S, heads, D]`, normed.
    fn query(&self, x: &Tensor) -> Tensor {
        self.norm_q.forward(&self.to_q.forward(x)).unflatten(2, [self.heads, -1])
    }

    /// k `[B, S, heads, D]`, normed.
    fn key(&self, x: &Tensor) -> Tensor {
        self.norm_k.forward(&self.to_k.forward(x)).unflatten(2, [self.heads, -1])
    }

    /// v `[B, S, heads, D]`.
    fn value(&self, x: &Tensor) -> Tensor {
        self.to_v.forward(x).unflatten(2, [self.heads, -1])
    }

    /// k and v of `context` `[B, L, dim]`, each `[B, heads, L, D]` as the fused kernel takes them.
    pub fn keys_values(&self, context: &Tensor) -> (Tensor, Tensor) {
        (self.key(context).transpose(1, 2), self.value(context).transpose(1, 2))
    }

    fn attend(&self, kind: Kind, q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>) -> Tensor {
        // [B, S, H, D] → [B, H, S, D] for the fused kernel (flash or cuDNN on GPUs), and back.
        let out = Tensor::scaled_dot_product_attention(&q.transpose(1, 2), k, v, bias, 0.0, false, None, false);
        self.to_out.forward(&out.transpose(1, 2).flatten(2, 3).to_kind(kind))
    }
}

/// The text side of a job's cross-attention: every block's keys and values for the projected prompt embeddings.
/// They depend on the prompt alone, so the denoising loop prepares them once per job instead of every step.
///
/// Rows past a prompt's length are zero (the pipeline zeroes them, as diffusers does), so all of them project to
/// one and the same key and value. The context keeps a single such row and adds ln(count) to its attention logit:
/// a softmax over n identical entries is one entry weighted n, so the attention is unchanged while it runs over
/// the prompt's real length plus one row instead of the whole padded length (512 for Wan2.1). Rows other
/// prompts of the batch do not have are masked out with −∞.
///
/// For image-to-video, the context also holds every block's keys and values of the embedded CLIP tokens, which
/// depend on the image alone.
pub struct TextContext {
    blocks: Vec<(Tensor, Tensor)>,
    bias: Option<Tensor>,
    image: Vec<(Tensor, Tensor)>,
}

impl TextContext {
    /// How many key rows each block attends to.
    pub fn keys(&self) -> i64 {
        self.blocks.first().map_or(0, |(k, _)| k.size()[2])
    }
}

/// Per batch row of `text` `[B, L, d]`: the length up to its last non-zero row.
fn text_lengths(text: &Tensor) -> Vec<i64> {
    let nonzero = text.abs().amax([-1], false).gt(0.0).to_kind(Kind::Int64).to_device(tch::Device::Cpu);
    let [b, l] = nonzero.size()[..] else { unreachable!("[B, L] by construction") };
    let flags = Vec::<i64>::try_from(nonzero.flatten(0, -1)).unwrap_or_default();
    (0..b as usize)
        .map(|row| {
            let row = &flags[row * l as usize..(row + 1) * l as usize];
            row.iter().rposition(|&f| f != 0).map_or(0, |i| i as i64 + 1)
        })
        .collect()
}

/// `text` `[B, L, d]` with its zero tail folded to one row per prompt, and the logit bias that makes the fold
/// exact, `[B, 1, 1, L']`; `None` for the bias when no prompt has a zero tail (nothing folds).
fn fold_padding(text: &Tensor) -> (Tensor, Option<Tensor>) {
    let [b, l, _] = text.size()[..] else { unreachable!("[B, L, d] by construction") };
    let lengths = text_lengths(text);
    if lengths.iter().all(|&n| n == l) {
        return (text.shallow_clone(), None);
    }
    // Each prompt keeps its real rows and, when it has a tail, its first zero row, standing for all of them. Every
    // row past a prompt's length is zero, so the rows a shorter prompt gets beyond that are zero too (and masked).
    let kept = lengths.iter().map(|&n| (n + 1).min(l)).max().unwrap_or(1);
    let folded = text.narrow(1, 0, kept);
    let mut bias = vec![0f32; (b * kept) as usize];
    for (row, &n) in lengths.iter().enumerate() {
        for (j, value) in bias[row * kept as usize..(row + 1) * kept as usize].iter_mut().enumerate() {
            let j = j as i64;
            if j == n {
                *value = ((l - n) as f32).ln();
            } else if j > n {
                *value = f32::NEG_INFINITY;
            }
        }
    }
    let bias = Tensor::from_slice(&bias).view([b, 1, 1, kept]).to_device(text.device());
    (folded, Some(bias))
}

#[derive(Debug)]
pub struct Block {
    norm1: Fp32LayerNorm,
    pub attn1: Attention,
    norm2: Option<Fp32LayerNorm>,
    pub attn2: Attention,
    norm3: Fp32LayerNorm,
    ffn_in: Linear,
    ffn_out: Linear,
    scale_shift_table: Tensor,
}

impl Block {
    pub fn new(vs: nn::Path, c: &TransformerConfig, s: &Storage) -> Self {
        let dim = c.inner_dim();
        let heads = c.num_attention_heads;
        Self {
            norm1: Fp32LayerNorm::new(&vs / "norm1", dim, c.eps, false),
            attn1: Attention::new(&vs / "attn1", dim, heads, c.eps, false, s),
            norm2: c.cross_attn_norm.then(|| Fp32LayerNorm::new(&vs / "norm2", dim, c.eps, true)),
            attn2: Attention::new(&vs / "attn2", dim, heads, c.eps, c.added_kv_proj_dim.is_some(), s),
            norm3: Fp32LayerNorm::new(&vs / "norm3", dim, c.eps, false),
            ffn_in: Linear::new(&vs / "ffn" / "net" / "0" / "proj", dim, c.ffn_dim, true, s),
            ffn_out: Linear::new(&vs / "ffn" / "net" / "2", c.ffn_dim, dim, true, s),
            scale_shift_table: vs.var("scale_shift_table", &[1, 6, dim], nn::Init::Const(0.0)),
        }
    }

    /// `x` `[B, S, dim]`, `text` this block's prepared keys and values with their `bias` (see [`TextContext`]),
    /// `modulation` `[B, T, 6, dim]` (the projected timestep: T is 1, or one per token with per-token timesteps).
    pub fn forward(
        &self,
        x: &Tensor,
        text: &(Tensor, Tensor),
        bias: Option<&Tensor>,
        image: Option<&(Tensor, Tensor)>,
        modulation: &Tensor,
        rope: (&Tensor, &Tensor),
    ) -> Tensor {
        let kind = x.kind();
        let m: Vec<Tensor> = (self.scale_shift_table.to_kind(Kind::Float).unsqueeze(0)
            + modulation.to_kind(Kind::Float))
        .chunk(6, 2)
        .iter()
        .map(|t| t.squeeze_dim(2))
        .collect();
        let (shift, scale, gate, c_shift, c_scale, c_gate) = (&m[0], &m[1], &m[2], &m[3], &m[4], &m[5]);
        let xf = x.to_kind(Kind::Float);
        let h = (self.norm1.forward(&xf) * (scale + 1.0) + shift).to_kind(kind);
        let attn = self.attn1.forward_self(&h, rope);
        let x = (xf + attn * gate).to_kind(kind);
        let h = match &self.norm2 {
            Some(n) => n.forward(&x).to_kind(kind),
            None => x.shallow_clone(),
        };
        let x = &x + self.attn2.forward_cross(&h, &text.0, &text.1, bias, image);
        let h = (self.norm3.forward(&x) * (c_scale + 1.0) + c_shift).to_kind(kind);
        let ff = self.ffn_out.forward(&self.ffn_in.forward(&h).gelu("tanh"));
        (x.to_kind(Kind::Float) + ff.to_kind(Kind::Float) * c_gate).to_kind(kind)
    }
}

/// `WanImageEmbedding`: CLIP tokens `[B, N, image_dim]` to the model's width, through a LayerNorm, a GELU MLP
/// and a LayerNorm (both norms with diffusers' FP32LayerNorm defaults: affine, eps 1e-5). First–last frame models
/// add a learned position embedding over both images' tokens, `[1, 2N, image_dim]`, after folding the two images
/// of each clip into one sequence.
#[derive(Debug)]
pub struct ImageEmbedding {
    norm1: Fp32LayerNorm,
    ff_in: Linear,
    ff_out: Linear,
    norm2: Fp32LayerNorm,
    pos_embed: Option<Tensor>,
}

impl ImageEmbedding {
    fn new(vs: nn::Path, image_dim: i64, dim: i64, pos_embed_seq_len: Option<i64>, s: &Storage) -> Self {
        Self {
            norm1: Fp32LayerNorm::new(&vs / "norm1", image_dim, 1e-5, true),
            ff_in: Linear::new(&vs / "ff" / "net" / "0" / "proj", image_dim, image_dim, true, s),
            ff_out: Linear::new(&vs / "ff" / "net" / "2", image_dim, dim, true, s),
            norm2: Fp32LayerNorm::new(&vs / "norm2", dim, 1e-5, true),
            pos_embed: pos_embed_seq_len.map(|n| vs.var("pos_embed", &[1, n, image_dim], nn::Init::Const(0.0))),
        }
    }

    /// How many images' tokens make one clip's: 2 for first–last frame, else 1.
    pub fn images_per_clip(&self) -> i64 {
        if self.pos_embed.is_some() { 2 } else { 1 }
    }

    /// `tokens` `[B·images_per_clip, N, image_dim]` → `[B, images_per_clip·N, dim]`, in the weights' dtype.
    pub fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        let kind = self.ff_in.kind();
        let x = tokens.to_kind(kind);
        let x = match &self.pos_embed {
            Some(pos) => {
                let [n, len, d] = x.size()[..] else {
                    return Err(Error::internal(format!("image tokens must be [B, N, d], got {:?}", x.size())));
                };
                if n % 2 != 0 || 2 * len != pos.size()[1] {
                    return Err(Error::internal(format!(
                        "a first–last frame model takes two images' tokens per clip ({} in all); got {n} images of {len}",
                        pos.size()[1]
                    )));
                }
                x.view([n / 2, 2 * len, d]) + pos
            }
            None => x,
        };
        let h = self.norm1.forward(&x).to_kind(kind);
        let h = self.ff_out.forward(&self.ff_in.forward(&h).gelu("none"));
        Ok(self.norm2.forward(&h).to_kind(kind))
    }
}

/// The timestep and text embedder, and the image embedder of image-to-video models.
#[derive(Debug)]
pub struct ConditionEmbedder {
    freq_dim: i64,
    time_1: Linear,
    time_2: Linear,
    time_proj: Linear,
    text_1: Linear,
    text_2: Linear,
    pub image: Option<ImageEmbedding>,
}

impl ConditionEmbedder {
    pub fn new(vs: nn::Path, c: &TransformerConfig, s: &Storage) -> Self {
        let dim = c.inner_dim();
        Self {
            freq_dim: c.freq_dim,
            time_1: Linear::new(&vs / "time_embedder" / "linear_1", c.freq_dim, dim, true, s),
            time_2: Linear::new(&vs / "time_embedder" / "linear_2", dim, dim, true, s),
            time_proj: Linear::new(&vs / "time_proj", dim, 6 * dim, true, s),
            text_1: Linear::new(&vs / "text_embedder" / "linear_1", c.text_dim, dim, true, s),
            text_2: Linear::new(&vs / "text_embedder" / "linear_2", dim, dim, true, s),
            image: c
                .image_dim
                .map(|image_dim| ImageEmbedding::new(&vs / "image_embedder", image_dim, dim, c.pos_embed_seq_len, s)),
        }
    }

    /// (temb `[B, dim]`, projected timestep `[B, 6·dim]`), in `kind`.
    pub fn time(&self, timestep: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let sinusoid = timestep_sinusoid(timestep, self.freq_dim).to_kind(self.time_1.kind());
        let temb = self.time_2.forward(&self.time_1.forward(&sinusoid).silu()).to_kind(kind);
        let proj = self.time_proj.forward(&temb.silu());
        (temb, proj)
    }

    /// The projected text `[B, L, dim]`.
    pub fn text(&self, text: &Tensor) -> Tensor {
        self.text_2.forward(&self.text_1.forward(text).gelu("tanh"))
    }
}

#[derive(Debug)]
pub struct WanTransformer {
    pub config: TransformerConfig,
    pub rope: Rope,
    patch_embedding: nn::Conv<[i64; 3]>,
    pub condition_embedder: ConditionEmbedder,
    pub blocks: Vec<Block>,
    norm_out: Fp32LayerNorm,
    proj_out: Linear,
    scale_shift_table: Tensor,
    offload: Option<BlockOffload>,
}

impl WanTransformer {
    /// A transformer with every weight in floats.
    pub fn new(vs: nn::Path, config: TransformerConfig) -> Result<Self> {
        Self::with_storage(vs, config, &Storage::dense())
    }

    /// A transformer whose linear layers keep the weights `storage` names quantized (see [`Linear`]).
    pub fn with_storage(vs: nn::Path, config: TransformerConfig, s: &Storage) -> Result<Self> {
        config.check()?;
        let c = &config;
        let dim = c.inner_dim();
        let conv = super::conv3d_config(c.patch_size);
        Ok(Self {
            rope: Rope::new(c.attention_head_dim, c.patch_size, c.rope_max_seq_len, vs.device()),
            patch_embedding: nn::conv(&vs / "patch_embedding", c.in_channels, dim, c.patch_size, conv),
            condition_embedder: ConditionEmbedder::new(&vs / "condition_embedder", c, s),
            blocks: (0..c.num_layers).map(|i| Block::new(&vs / "blocks" / i, c, s)).collect(),
            norm_out: Fp32LayerNorm::new(&vs / "norm_out", dim, c.eps, false),
            proj_out: Linear::new(
                &vs / "proj_out",
                dim,
                c.out_channels * c.patch_size.iter().product::<i64>(),
                true,
                s,
            ),
            scale_shift_table: vs.var("scale_shift_table", &[1, 2, dim], nn::Init::Const(0.0)),
            offload: None,
            config,
        })
    }

    /// The text side of every block's cross-attention for prompt embeddings `text` `[B, L, text_dim]` (see
    /// [`TextContext`]). `fold` folds the zero rows past each prompt's length into one; it applies in fp32 only,
    /// where ln(count) in the bias is exact to rounding (in bf16 it would be off by up to 1% of the padding's
    /// weight), so reduced-precision weights keep every row.
    ///
    /// An image-to-video model (one with an image embedder) also takes the CLIP tokens, `image`
    /// `[B·images, N, image_dim]` (two images per clip for first–last frame), and is refused without them; a
    /// text-to-video model is refused them.
    pub fn text_context(&self, text: &Tensor, image: Option<&Tensor>, fold: bool) -> Result<TextContext> {
        let kind = self.patch_embedding.ws.kind();
        let text = text.to_kind(kind);
        let (text, bias) = if fold && kind == Kind::Float { fold_padding(&text) } else { (text, None) };
        let projected = self.condition_embedder.text(&text);
        let image = match (&self.condition_embedder.image, image) {
            (Some(embedder), Some(tokens)) => {
                let embedded = embedder.forward(tokens)?;
                if embedded.size()[0] != projected.size()[0] {
                    return Err(Error::internal(format!(
                        "{} clips of image tokens for {} prompts",
                        embedded.size()[0],
                        projected.size()[0]
                    )));
                }
                let mut kv = Vec::with_capacity(self.blocks.len());
                self.each_block(|i| {
                    kv.extend(self.blocks[i].attn2.image_keys_values(&embedded));
                    Ok(())
                })?;
                kv
            }
            (None, None) => Vec::new(),
            (Some(_), None) => return Err(Error::internal("this image-to-video transformer needs the image's tokens")),
            (None, Some(_)) => return Err(Error::internal("this transformer takes no image tokens")),
        };
        let mut blocks = Vec::with_capacity(self.blocks.len());
        self.each_block(|i| {
            blocks.push(self.blocks[i].attn2.keys_values(&projected));
            Ok(())
        })?;
        Ok(TextContext { blocks, bias, image })
    }

    /// Keeps the blocks' weights in host memory from now on, lending `ahead + 1` of them at a time to `device`
    /// (see [`BlockOffload`]), where the other weights go. `vs` is the store the model was built in, on the host or
    /// on `device`.
    pub fn offload_blocks(&mut self, vs: &tch::nn::VarStore, ahead: usize, device: tch::Device) {
        self.offload = Some(BlockOffload::new(vs, "blocks.", self.blocks.len(), ahead, device));
        self.buffers_to(device);
    }

    /// Moves what the model computes once and keeps outside its variables (the rotary tables) to `device`: for a
    /// model built in host memory whose weights are lent to `device` (block offload, expert swap).
    pub fn buffers_to(&mut self, device: tch::Device) {
        self.rope.cos = self.rope.cos.to_device(device);
        self.rope.sin = self.rope.sin.to_device(device);
    }

    /// Every linear layer by name, with its `[out, in]` shape: what LoRA adapters can address.
    pub fn linears(&self) -> std::collections::BTreeMap<String, [i64; 2]> {
        self.linear_layers().into_iter().map(|l| l.describe()).map(|(n, s)| (n.to_string(), s)).collect()
    }

    /// Whether any linear layer keeps its weight quantized.
    pub fn is_quantized(&self) -> bool {
        self.linear_layers().iter().any(|l| l.is_quantized())
    }

    fn linear_layers(&self) -> Vec<&Linear> {
        let e = &self.condition_embedder;
        let mut all: Vec<&Linear> = vec![&e.time_1, &e.time_2, &e.time_proj, &e.text_1, &e.text_2, &self.proj_out];
        if let Some(image) = &e.image {
            all.extend([&image.ff_in, &image.ff_out]);
        }
        for b in &self.blocks {
            for a in [&b.attn1, &b.attn2] {
                all.extend([&a.to_q, &a.to_k, &a.to_v, &a.to_out]);
                if let Some((k, v, _)) = &a.added {
                    all.extend([k, v]);
                }
            }
            all.extend([&b.ffn_in, &b.ffn_out]);
        }
        all
    }

    /// The block offload, when the blocks are offloaded.
    pub fn offload(&self) -> Option<&BlockOffload> {
        self.offload.as_ref()
    }

    /// Calls `run(i)` for each block in order, with its weights on the device.
    fn each_block(&self, run: impl FnMut(usize) -> Result<()>) -> Result<()> {
        match &self.offload {
            Some(offload) => offload.pass(run),
            None => (0..self.blocks.len()).try_for_each(run),
        }
    }

    /// The velocity for latents `x` `[B, C, F, H, W]` at `timestep` `[B]` (or `[B, tokens]`, one per token, as
    /// Wan2.2 TI2V's `expand_timesteps` gives it), given text `[B, L, text_dim]` and, for Wan2.1 image-to-video,
    /// the CLIP tokens (see [`Self::text_context`]).
    pub fn forward(&self, x: &Tensor, timestep: &Tensor, text: &Tensor, image: Option<&Tensor>) -> Result<Tensor> {
        self.forward_with(x, timestep, &self.text_context(text, image, true)?)
    }

    /// [`Self::forward`] with the text side prepared once by [`Self::text_context`], as the denoising loop calls it.
    pub fn forward_with(&self, x: &Tensor, timestep: &Tensor, text: &TextContext) -> Result<Tensor> {
        Ok(self.forward_cached(x, timestep, text, None, false)?.0)
    }

    /// `forward_with`, for step caching (`models::step_cache`): with `reuse`, the blocks are skipped and their
    /// residual (hidden states out minus in) is taken from an earlier step; without, they run, and with `record`
    /// their residual is returned beside the output.
    pub fn forward_cached(
        &self,
        x: &Tensor,
        timestep: &Tensor,
        text: &TextContext,
        reuse: Option<&Tensor>,
        record: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let [b, _c, f, h, w] = x.size()[..] else {
            return Err(Error::internal(format!("latents must be [B, C, F, H, W], got {:?}", x.size())));
        };
        let [pt, ph, pw] = self.config.patch_size;
        if f % pt != 0 || h % ph != 0 || w % pw != 0 {
            return Err(Error::invalid(format!("latent {f}x{h}x{w} does not divide into patches {pt}x{ph}x{pw}")));
        }
        let (pf, phh, pww) = (f / pt, h / ph, w / pw);
        if pf.max(phh).max(pww) > self.config.rope_max_seq_len {
            return Err(Error::invalid(format!(
                "the latent grid {pf}x{phh}x{pww} exceeds rope_max_seq_len {}",
                self.config.rope_max_seq_len
            )));
        }
        if text.blocks.len() != self.blocks.len() || text.blocks.first().is_some_and(|(k, _)| k.size()[0] != b) {
            return Err(Error::internal("the text context was prepared for another model or batch"));
        }
        let (cos, sin) = self.rope.forward(f, h, w);
        // Inputs follow the weights' dtype (bf16 or fp16 on GPUs); the norms and modulation still run in fp32,
        // and the velocity is returned in fp32 for the scheduler.
        let kind = self.patch_embedding.ws.kind();
        let x = x.to_kind(kind);
        let tokens = x.apply(&self.patch_embedding).flatten(2, -1).transpose(1, 2).contiguous();
        // One timestep per clip, or per token (the time embedding and every modulation are then per token, the
        // output's too): [B, T, ...] with T = 1 or the token count.
        let per_clip = match timestep.size()[..] {
            [n] if n == b => 1,
            [n, t] if n == b && t == pf * phh * pww => t,
            _ => {
                return Err(Error::internal(format!(
                    "timestep {:?} is neither [{b}] nor [{b}, {}] (one per token)",
                    timestep.size(),
                    pf * phh * pww
                )));
            }
        };
        let (temb, proj) = self.condition_embedder.time(&timestep.reshape([-1]), kind);
        let temb = temb.view([b, per_clip, -1]);
        let modulation = proj.view([b, per_clip, 6, -1]);
        let (hidden, residual) = match reuse {
            Some(residual) => (&tokens + residual, None),
            None => {
                let mut hidden = tokens.shallow_clone();
                self.each_block(|i| {
                    let kv = &text.blocks[i];
                    hidden = self.blocks[i].forward(
                        &hidden,
                        kv,
                        text.bias.as_ref(),
                        text.image.get(i),
                        &modulation,
                        (&cos, &sin),
                    );
                    Ok(())
                })?;
                let residual = record.then(|| &hidden - &tokens);
                (hidden, residual)
            }
        };
        let m: Vec<Tensor> = (self.scale_shift_table.to_kind(Kind::Float).unsqueeze(0)
            + temb.to_kind(Kind::Float).unsqueeze(2))
        .chunk(2, 2)
        .iter()
        .map(|t| t.squeeze_dim(2))
        .collect();
        let (shift, scale) = (&m[0], &m[1]);
        let hidden = (self.norm_out.forward(&hidden) * (scale + 1.0) + shift).to_kind(hidden.kind());
        let out = self.proj_out.forward(&hidden);
        let out = out.reshape([b, pf, phh, pww, pt, ph, pw, -1]).permute([0, 7, 1, 4, 2, 5, 3, 6]);
        Ok((out.flatten(6, 7).flatten(4, 5).flatten(2, 3).to_kind(Kind::Float), residual))
    }
}
