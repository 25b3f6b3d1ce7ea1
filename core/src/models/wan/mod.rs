//! Wan2.1 text-to-video, native on libtorch: the UMT5 text encoder, the diffusion transformer and the VAE
//! decoder, loaded from a diffusers-format folder and matched number for number against diffusers 0.42.1 and
//! transformers 5.23.0 (see `core/tests/wan_parity.rs` and its fixtures).
//!
//! Paper and model card: Wan Team, "Wan: Open and Advanced Large-Scale Video Generative Models", 2025;
//! Wan-AI/Wan2.1-T2V-1.3B (Apache-2.0).

pub mod clip;
pub mod condition;
pub mod keys;
pub mod pipeline;
pub mod tokenizer;
pub mod transformer;
pub mod umt5;
pub mod vae;
pub mod vae_encoder;
pub mod vae_tiling;

use super::weights::{Checkpoint, weight_files};
use crate::error::{Error, Result};
use std::path::Path;
use tch::nn::VarStore;

/// Builds a component with `build` on a fresh VarStore on `device`, then fills it from `folder`'s weights (see
/// [`Checkpoint`]). `ignore_prefixes` names checkpoint keys that exist but this build does not use (the VAE
/// encoder).
pub fn load_component<T>(
    folder: &Path,
    stem: &str,
    device: tch::Device,
    aliases: &[(&str, &str)],
    ignore_prefixes: &[&str],
    build: impl FnOnce(tch::nn::Path) -> Result<T>,
) -> Result<(VarStore, T)> {
    let checkpoint = Checkpoint::open(&weight_files(folder, stem)?)?;
    fill(checkpoint, device, aliases, ignore_prefixes, build)
}

fn fill<T>(
    checkpoint: Checkpoint,
    device: tch::Device,
    aliases: &[(&str, &str)],
    ignore_prefixes: &[&str],
    build: impl FnOnce(tch::nn::Path) -> Result<T>,
) -> Result<(VarStore, T)> {
    let mut vs = VarStore::new(device);
    let model = build(vs.root())?;
    vs.freeze();
    checkpoint.load(&vs, aliases, ignore_prefixes)?;
    Ok((vs, model))
}

/// A transformer from `folder` (`diffusion_pytorch_model.*`, or one GGUF file), in diffusers' key names or the
/// original ones, its linear layers keeping quantized weights quantized.
pub fn load_transformer(
    folder: &Path,
    device: tch::Device,
    config: transformer::TransformerConfig,
) -> Result<(VarStore, transformer::WanTransformer)> {
    let checkpoint = Checkpoint::open(&weight_files(folder, "diffusion_pytorch_model")?)?;
    let names: Vec<&str> = checkpoint.names().collect();
    let checkpoint = if keys::is_original(&names) { checkpoint.renamed(keys::to_diffusers)? } else { checkpoint };
    let storage = checkpoint.storage()?;
    fill(checkpoint, device, &[], &[], |p| transformer::WanTransformer::with_storage(p, config, &storage))
}

/// Casts a component's float variables to `kind`, leaving quantized slots (`Uint8`) as they are.
pub fn cast_floats(vs: &mut VarStore, kind: tch::Kind) {
    match kind {
        tch::Kind::BFloat16 => vs.bfloat16(),
        tch::Kind::Half => vs.half(),
        tch::Kind::Double => vs.double(),
        _ => vs.float(),
    }
}

/// A 3-D convolution with bias and no padding (the Wan modules pad themselves, causally), of this stride; its
/// weights are zeros until the checkpoint fills them.
pub(crate) fn conv3d_config(stride: [i64; 3]) -> tch::nn::ConvConfigND<[i64; 3]> {
    tch::nn::ConvConfigND {
        stride,
        padding: [0, 0, 0],
        dilation: [1, 1, 1],
        groups: 1,
        bias: true,
        ws_init: tch::nn::Init::Const(0.0),
        bs_init: tch::nn::Init::Const(0.0),
        padding_mode: tch::nn::PaddingMode::Zeros,
    }
}

/// The values of a config's dimensions, each refused unless positive, for the parameter bounds.
fn positive<const N: usize>(component: &str, dims: [(&str, i64); N]) -> Result<[u64; N]> {
    let mut out = [0u64; N];
    for (slot, (name, value)) in out.iter_mut().zip(dims) {
        if value < 1 {
            return Err(Error::invalid(format!("{component} config: {name} is {value}; it must be positive")));
        }
        *slot = value as u64;
    }
    Ok(out)
}
