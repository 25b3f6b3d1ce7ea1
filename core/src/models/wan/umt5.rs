//! The UMT5 text encoder (transformers 5.23 `UMT5EncoderModel`), as Wan2.1 uses umt5-xxl.
//!
//! Unlike T5, every layer has its own relative attention bias. Scores are not scaled by 1/√d. The feed-forward is
//! gated GELU (tanh), and the RMS norms compute their variance in fp32.

use crate::error::{Error, Result};
use crate::models::linear::Linear;
use crate::models::weights::Storage;
use serde::Deserialize;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// `text_encoder/config.json`.
#[derive(Clone, Debug, Deserialize)]
pub struct Umt5Config {
    pub vocab_size: i64,
    pub d_model: i64,
    pub d_kv: i64,
    pub d_ff: i64,
    pub num_layers: i64,
    pub num_heads: i64,
    #[serde(default = "buckets")]
    pub relative_attention_num_buckets: i64,
    #[serde(default = "distance")]
    pub relative_attention_max_distance: i64,
    #[serde(default = "gated_gelu")]
    pub feed_forward_proj: String,
    #[serde(default = "eps")]
    pub layer_norm_epsilon: f64,
}

impl Umt5Config {
    /// At least how many parameters this config describes (the embedding and every layer's attention and gated
    /// feed-forward matrices), checked against the weight files before anything is allocated. It also refuses a
    /// dimension that is not positive. Saturates instead of overflowing.
    pub fn min_parameters(&self) -> Result<u64> {
        let dims = [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
        ];
        let [vocab, d_model, d_kv, d_ff, layers, heads] = super::positive("text_encoder", dims)?;
        let attention = d_model.saturating_mul(heads).saturating_mul(d_kv).saturating_mul(4);
        let feed_forward = d_model.saturating_mul(d_ff).saturating_mul(3);
        Ok(vocab.saturating_mul(d_model).saturating_add(layers.saturating_mul(attention.saturating_add(feed_forward))))
    }
}

fn buckets() -> i64 {
    32
}
fn distance() -> i64 {
    128
}
fn gated_gelu() -> String {
    "gated-gelu".into()
}
fn eps() -> f64 {
    1e-6
}

/// T5's RMS norm: variance in fp32, no mean, no bias.
#[derive(Debug)]
struct LayerNorm {
    weight: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn new(vs: nn::Path, dim: i64, eps: f64) -> Self {
        Self { weight: vs.var("weight", &[dim], nn::Init::Const(1.0)), eps }
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        let variance = x.to_kind(Kind::Float).pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let mut h = x * (variance + self.eps).rsqrt();
        if matches!(self.weight.kind(), Kind::Half | Kind::BFloat16) {
            h = h.to_kind(self.weight.kind());
        }
        &self.weight * h
    }
}

/// The bucket of each relative position (memory − query), bidirectional: half the buckets per sign, the first
/// half of those exact, the rest logarithmic up to `max_distance`.
pub fn relative_position_bucket(relative: &Tensor, num_buckets: i64, max_distance: i64) -> Tensor {
    let half = num_buckets / 2;
    let sign = relative.gt(0).to_kind(Kind::Int64) * half;
    let n = relative.abs();
    let max_exact = half / 2;
    let is_small = n.lt(max_exact);
    let log_ratio = (n.to_kind(Kind::Float) / max_exact as f64).log() / ((max_distance as f64 / max_exact as f64).ln())
        * (half - max_exact) as f64;
    let large = (log_ratio.to_kind(Kind::Int64) + max_exact).clamp_max(half - 1);
    sign + n.where_self(&is_small, &large)
}

/// What the text encoder's layer names start with, for LoRA adapters (diffusers' component name).
pub const PREFIX: &str = "text_encoder.";

#[derive(Debug)]
struct Block {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    bias: nn::Embedding,
    norm_attn: LayerNorm,
    wi_0: Linear,
    wi_1: Linear,
    wo: Linear,
    norm_ff: LayerNorm,
    heads: i64,
    head_dim: i64,
    buckets: i64,
    max_distance: i64,
}

impl Block {
    fn new(vs: nn::Path, c: &Umt5Config) -> Self {
        let inner = c.num_heads * c.d_kv;
        // Named `text_encoder.…` for LoRA adapters (see `models::lora`), which address these layers by name.
        let linear = |p: nn::Path, i: i64, o: i64| Linear::new(p, i, o, false, &Storage::dense()).prefixed(PREFIX);
        let attn = &vs / "layer" / "0" / "SelfAttention";
        let ff = &vs / "layer" / "1" / "DenseReluDense";
        Self {
            q: linear(&attn / "q", c.d_model, inner),
            k: linear(&attn / "k", c.d_model, inner),
            v: linear(&attn / "v", c.d_model, inner),
            o: linear(&attn / "o", inner, c.d_model),
            bias: nn::embedding(
                &attn / "relative_attention_bias",
                c.relative_attention_num_buckets,
                c.num_heads,
                Default::default(),
            ),
            norm_attn: LayerNorm::new(&vs / "layer" / "0" / "layer_norm", c.d_model, c.layer_norm_epsilon),
            wi_0: linear(&ff / "wi_0", c.d_model, c.d_ff),
            wi_1: linear(&ff / "wi_1", c.d_model, c.d_ff),
            wo: linear(&ff / "wo", c.d_ff, c.d_model),
            norm_ff: LayerNorm::new(&vs / "layer" / "1" / "layer_norm", c.d_model, c.layer_norm_epsilon),
            heads: c.num_heads,
            head_dim: c.d_kv,
            buckets: c.relative_attention_num_buckets,
            max_distance: c.relative_attention_max_distance,
        }
    }

    /// This layer's position bias `[1, heads, L, L]`.
    fn position_bias(&self, len: i64, device: tch::Device) -> Tensor {
        let pos = Tensor::arange(len, (Kind::Int64, device));
        let relative = pos.unsqueeze(0) - pos.unsqueeze(1);
        let bucket = relative_position_bucket(&relative, self.buckets, self.max_distance);
        self.bias.forward(&bucket).permute([2, 0, 1]).unsqueeze(0)
    }

    fn forward(&self, x: &Tensor, additive_mask: &Tensor) -> Tensor {
        let (b, l) = (x.size()[0], x.size()[1]);
        let h = self.norm_attn.forward(x);
        let split = |t: Tensor| t.view([b, l, self.heads, self.head_dim]).transpose(1, 2);
        let (q, k, v) = (split(self.q.forward(&h)), split(self.k.forward(&h)), split(self.v.forward(&h)));
        // No 1/√d: T5 folds the scale into its initialisation.
        let scores = q.matmul(&k.transpose(-1, -2)) + self.position_bias(l, x.device()) + additive_mask;
        let weights = scores.to_kind(Kind::Float).softmax(-1, Kind::Float).to_kind(q.kind());
        let attn = weights.matmul(&v).transpose(1, 2).reshape([b, l, -1]);
        let x = x + self.o.forward(&attn);
        let h = self.norm_ff.forward(&x);
        let gated = self.wi_0.forward(&h).gelu("tanh") * self.wi_1.forward(&h);
        let gated = gated.to_kind(self.wo.kind());
        &x + self.wo.forward(&gated)
    }
}

#[derive(Debug)]
pub struct Umt5Encoder {
    pub config: Umt5Config,
    shared: nn::Embedding,
    blocks: Vec<Block>,
    final_norm: LayerNorm,
}

impl Umt5Encoder {
    pub fn new(vs: nn::Path, config: Umt5Config) -> Result<Self> {
        if config.feed_forward_proj != "gated-gelu" {
            return Err(Error::invalid(format!(
                "feed_forward_proj {:?} is not supported; UMT5 in Wan uses gated-gelu",
                config.feed_forward_proj
            )));
        }
        let c = &config;
        Ok(Self {
            shared: nn::embedding(&vs / "shared", c.vocab_size, c.d_model, Default::default()),
            blocks: (0..c.num_layers).map(|i| Block::new(&vs / "encoder" / "block" / i, c)).collect(),
            final_norm: LayerNorm::new(&vs / "encoder" / "final_layer_norm", c.d_model, c.layer_norm_epsilon),
            config,
        })
    }

    /// Every linear layer by name (`text_encoder.encoder.block.0.layer.0.SelfAttention.q`), with its `[out, in]`
    /// shape: what LoRA adapters can address.
    pub fn linears(&self) -> std::collections::BTreeMap<String, [i64; 2]> {
        let layers = self.blocks.iter().flat_map(|b| [&b.q, &b.k, &b.v, &b.o, &b.wi_0, &b.wi_1, &b.wo]);
        layers.map(|l| l.describe()).map(|(n, s)| (n.to_string(), s)).collect()
    }

    /// The last hidden state `[B, L, d_model]` for token ids and attention mask `[B, L]`. Rows past each prompt's
    /// length are not zeroed here (the pipeline does that).
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Tensor {
        let mut x = self.shared.forward(ids);
        let kind = x.kind();
        // Padded keys get the dtype's lowest value, as transformers' additive mask does.
        let additive = (mask.ones_like() - mask).to_kind(kind).unsqueeze(1).unsqueeze(1) * f32::MIN as f64;
        for block in &self.blocks {
            x = block.forward(&x, &additive);
        }
        self.final_norm.forward(&x)
    }
}
