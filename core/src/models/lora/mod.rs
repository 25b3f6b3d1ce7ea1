//! LoRA adapters: low-rank (and full) weight deltas for a model's linear layers, read from the formats people ship
//! and applied, unmerged, to the layers of one job.
//!
//! An [`Adapter`] is a file normalised once: every key in diffusers' module names, every layer a [`Delta`] of
//! `up · down` (with the file's `alpha / rank` folded into `down`), a full weight delta (`diff`) and a bias delta
//! (`diff_b`, or PEFT's `lora_B.bias`). Formats (`format.rs`): diffusers/PEFT (`transformer.…lora_A.weight`),
//! ComfyUI/kohya (`diffusion_model.…lora_down.weight`, `.alpha`), musubi's underscore form (`lora_unet_blocks_0_…`),
//! the original Wan key names, and lightx2v's (`diff`, `diff_b`). The semantics are diffusers' 0.42.1
//! (`load_lora_weights` with peft): `W·x + s·(α/r)·B·A·x + s·diff·x + s·diff_b` for an adapter at scale `s`
//! (`core/tests/wan_lora_parity.rs`).
//!
//! Applying: a job activates its adapters on its worker thread for as long as it runs ([`active::scoped`]), and
//! each [`crate::models::linear::Linear`] adds the deltas named after it, or, when the model keeps a merged copy
//! for the job's adapter set ([`merged`]), computes with that copy instead. The base weights are never written, so
//! one copy serves every job on a device whatever adapters each asks for, and an adapter at scale 0 (or none)
//! leaves the computation exactly as it was.

pub mod active;
pub mod format;
pub mod merged;

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// One layer's deltas.
#[derive(Debug)]
pub struct Delta {
    /// `(down [r, in], up [out, r])`, `alpha / r` folded into `down`.
    pub low_rank: Option<(Tensor, Tensor)>,
    /// A full `[out, in]` weight delta.
    pub weight: Option<Tensor>,
    /// An `[out]` bias delta.
    pub bias: Option<Tensor>,
}

impl Delta {
    /// The `[out, in]` shape the deltas imply (what the layer must have).
    pub fn shape(&self) -> Option<[i64; 2]> {
        if let Some((down, up)) = &self.low_rank {
            return Some([up.size()[0], down.size()[1]]);
        }
        self.weight.as_ref().map(|w| [w.size()[0], w.size()[1]])
    }

    /// `s ·` the deltas' contribution to the layer's output for input `x` `[.., in]`.
    pub fn apply(&self, x: &Tensor, scale: f64) -> Option<Tensor> {
        let mut out: Option<Tensor> = None;
        let mut add = |t: Tensor| {
            out = Some(match out.take() {
                Some(o) => o + t,
                None => t,
            })
        };
        if let Some((down, up)) = &self.low_rank {
            add(x.matmul(&down.tr()).matmul(&up.tr()));
        }
        if let Some(w) = &self.weight {
            add(x.matmul(&w.tr()));
        }
        if let Some(b) = &self.bias {
            add(b.shallow_clone());
        }
        out.map(|o| o * scale)
    }
}

/// An adapter file, normalised, on one device in one dtype.
#[derive(Debug)]
pub struct Adapter {
    pub path: PathBuf,
    /// The deltas by layer, in diffusers' names (`blocks.0.attn1.to_q`).
    pub layers: BTreeMap<String, Delta>,
}

// SAFETY: an adapter's tensors are written only while it is built, and never after: every use reads them in
// new operations (matmuls, adds), and libtorch supports concurrent reads of one tensor from several threads, as
// the models' own weights rely on (`wan::pipeline::Components`).
unsafe impl Send for Adapter {}
unsafe impl Sync for Adapter {}

impl Adapter {
    /// Reads `path` (safetensors) onto `device` in `kind`.
    pub fn open(path: &Path, device: Device, kind: Kind) -> Result<Self> {
        let named = |e: Error| Error::invalid(format!("LoRA {}: {}", path.display(), e.message()));
        let tensors = Tensor::read_safetensors(path)
            .map_err(|e| Error::invalid(format!("LoRA {}: not a readable safetensors file: {e}", path.display())))?;
        let layers = format::normalise(tensors).map_err(named)?;
        let layers = layers
            .into_iter()
            .map(|(name, d)| {
                let move_ = |t: Tensor| t.to_device(device).to_kind(kind);
                let delta = Delta {
                    low_rank: d.low_rank.map(|(a, b)| (move_(a), move_(b))),
                    weight: d.weight.map(move_),
                    bias: d.bias.map(move_),
                };
                (name, delta)
            })
            .collect();
        Ok(Self { path: path.to_path_buf(), layers })
    }

    /// Checks every layer against the model's linear layers (`name → [out, in]`): layers the model does not have
    /// are an error naming the adapter and listing them (the first few, and how many); a layer of another shape,
    /// one naming the adapter and the first such key.
    pub fn check(&self, linears: &BTreeMap<String, [i64; 2]>) -> Result<()> {
        let unmatched: Vec<&String> = self.layers.keys().filter(|name| !linears.contains_key(*name)).collect();
        if let [first, ..] = unmatched[..] {
            const LISTED: usize = 5;
            let listed: Vec<String> = unmatched.iter().take(LISTED).map(|n| format!("{n:?}")).collect();
            let more = unmatched.len().saturating_sub(LISTED);
            return Err(Error::invalid(format!(
                "LoRA {}: it has {} layer{} this model does not, {}{}: an adapter for another model? (first: {first:?})",
                self.path.display(),
                unmatched.len(),
                if unmatched.len() == 1 { "" } else { "s" },
                listed.join(", "),
                if more > 0 { format!(" and {more} more") } else { String::new() },
            )));
        }
        for (name, delta) in &self.layers {
            let Some(shape) = linears.get(name) else { continue };
            if let Some(got) = delta.shape().filter(|s| s != shape) {
                return Err(Error::invalid(format!(
                    "LoRA {}: layer {name:?} is {got:?} [out, in], but the model's is {shape:?}: an adapter for \
                     another size of this model?",
                    self.path.display()
                )));
            }
            if let Some(b) = &delta.bias
                && b.size() != [shape[0]]
            {
                return Err(Error::invalid(format!(
                    "LoRA {}: the bias delta of {name:?} has shape {:?}; the layer has {} outputs",
                    self.path.display(),
                    b.size(),
                    shape[0]
                )));
            }
        }
        Ok(())
    }
}
