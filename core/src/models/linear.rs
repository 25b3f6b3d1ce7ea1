//! A linear layer whose weight may stay quantized in memory.
//!
//! A dense layer holds its weight in the compute dtype, as `tch::nn::Linear` does. A quantized one holds the
//! checkpoint's bytes (fp8, or ggml blocks) in a `Uint8` variable (a "slot", which `VarStore::set_kind` style
//! casts of float variables leave alone) and upcasts them to the input's dtype at every call, on the input's
//! device. Memory then holds the quantized bytes only, plus one layer's upcast weight while it computes.

use super::weights::{Encoding, Storage};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

#[derive(Debug)]
enum Stored {
    Dense,
    /// `float8_e4m3fn` bytes, times the scale when there is one (one value, or one per output).
    Fp8 {
        scale: Option<Tensor>,
    },
    Ggml(super::weights::ggml::GgmlType),
}

#[derive(Debug)]
pub struct Linear {
    /// The layer's name in diffusers' spelling (`blocks.0.attn1.to_q`), which adapters address it by.
    name: String,
    weight: Tensor,
    bias: Option<Tensor>,
    stored: Stored,
    shape: [i64; 2],
}

impl Linear {
    /// A layer `in_dim → out_dim` under `p` (variables `weight`, `bias`), quantized when `storage` says the
    /// checkpoint holds `{p}.weight` quantized. Its values are zeros until the checkpoint fills them.
    pub fn new(p: nn::Path, in_dim: i64, out_dim: i64, bias: bool, storage: &Storage) -> Self {
        let layer = p.components().collect::<Vec<_>>().join(".");
        let name = format!("{layer}.weight");
        let shape = [out_dim, in_dim];
        let zeros = |shape: &[i64]| Tensor::zeros(shape, (Kind::Uint8, p.device()));
        let (weight, stored) = match storage.get(&name) {
            Some(q) => match q.encoding {
                Encoding::Fp8E4m3 => {
                    let scale = q.scale_shape.as_ref().map(|s| p.var("scale_weight", s, nn::Init::Const(1.0)));
                    (p.add("weight", zeros(&shape), false), Stored::Fp8 { scale })
                }
                Encoding::Ggml(g) => {
                    // A row that is not whole blocks is refused when the checkpoint fills the slot (its stored
                    // shape cannot match); here the slot takes the size the row would have.
                    let bytes = g.row_bytes(in_dim).unwrap_or(in_dim);
                    (p.add("weight", zeros(&[out_dim, bytes]), false), Stored::Ggml(g))
                }
                Encoding::Float(_) => (dense(&p, &shape), Stored::Dense),
            },
            None => (dense(&p, &shape), Stored::Dense),
        };
        let bound = 1.0 / (in_dim as f64).sqrt();
        let bias = bias.then(|| p.var("bias", &[out_dim], nn::Init::Uniform { lo: -bound, up: bound }));
        Self { name: layer, weight, bias, stored, shape }
    }

    /// The dtype the layer computes in: its float variables' (a quantized weight upcasts to it).
    pub fn kind(&self) -> Kind {
        match (&self.stored, &self.bias) {
            (Stored::Dense, _) => self.weight.kind(),
            (_, Some(b)) => b.kind(),
            (_, None) => Kind::Float,
        }
    }

    /// The layer with `prefix` before its name (`text_encoder.` for the text encoder's layers, so that adapters
    /// tell them from the transformer's).
    pub fn prefixed(mut self, prefix: &str) -> Self {
        self.name = format!("{prefix}{}", self.name);
        self
    }

    /// The layer's name and `[out, in]` shape.
    pub fn describe(&self) -> (&str, [i64; 2]) {
        (&self.name, self.shape)
    }

    /// The bias, if the layer has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Whether the weight stays quantized.
    pub fn is_quantized(&self) -> bool {
        !matches!(self.stored, Stored::Dense)
    }

    /// The weight `[out, in]` in `kind`: the variable itself when dense, else decoded now.
    pub fn weight(&self, kind: Kind) -> Tensor {
        match &self.stored {
            Stored::Dense => self.weight.shallow_clone(),
            Stored::Fp8 { scale } => {
                let w = self.weight.view_dtype(Kind::Float8e4m3fn).to_kind(kind);
                match scale {
                    Some(s) => {
                        w * s.to_kind(kind).reshape(super::weights::checkpoint::scale_view(&self.shape, &s.size()))
                    }
                    None => w,
                }
            }
            Stored::Ggml(g) => g
                .dequantize(&self.weight, &self.shape)
                .expect("a slot's size was checked when it was filled")
                .to_kind(kind),
        }
    }
}

/// A float weight initialised as `tch::nn::linear` does (models built without a checkpoint, as the benchmarks
/// and size tests build them, get the same values they always had).
fn dense(p: &nn::Path, shape: &[i64; 2]) -> Tensor {
    let config = nn::LinearConfig { bias: false, ..Default::default() };
    nn::linear(p, shape[1], shape[0], config).ws
}

impl Module for Linear {
    /// `x·Wᵀ + b`, plus the deltas of the job's LoRA adapters for this layer (see `models::lora`).
    fn forward(&self, x: &Tensor) -> Tensor {
        if super::lora::active::any() {
            return super::lora::active::forward(self, x);
        }
        x.linear(&self.weight(x.kind()), self.bias.as_ref())
    }
}
