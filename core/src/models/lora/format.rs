//! The key forms of the LoRA files people ship for Wan, all brought to diffusers' module names.
//!
//! | form | example key |
//! |---|---|
//! | diffusers / PEFT | `transformer.blocks.0.attn1.to_q.lora_A.weight`, `….lora_B.weight` (`.lora_B.bias`) |
//! | ComfyUI / kohya | `diffusion_model.blocks.0.self_attn.q.lora_down.weight`, `….lora_up.weight`, `….alpha` |
//! | musubi (underscores) | `lora_unet_blocks_0_self_attn_q.lora_down.weight`, `….alpha` |
//! | original Wan names | `blocks.0.self_attn.q.lora_A.weight` (no prefix) |
//! | lightx2v | `diffusion_model.blocks.0.self_attn.q.lora_A.weight`, `….diff_b`, `blocks.0.norm3.diff`, `head.head.diff` |
//!
//! `alpha` scales the pair by `alpha / rank` (as kohya trains it; diffusers #12074). `diff` is a full delta of a
//! layer's weight and `diff_b` of its bias; lightx2v's norm deltas are zeros, which diffusers drops, and so does
//! vgen, refusing any that is not zero rather than ignoring it. Every other key must be understood: one that is
//! not is an error naming it.

use super::Delta;
use crate::error::{Error, Result};
use crate::models::wan::keys;
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

/// What a key's last part says the tensor is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Part {
    Down,
    Up,
    UpBias,
    Alpha,
    Diff,
    DiffBias,
}

const SUFFIXES: [(&str, Part); 8] = [
    (".lora_A.weight", Part::Down),
    (".lora_down.weight", Part::Down),
    (".lora_B.weight", Part::Up),
    (".lora_up.weight", Part::Up),
    (".lora_B.bias", Part::UpBias),
    (".alpha", Part::Alpha),
    (".diff_b", Part::DiffBias),
    (".diff", Part::Diff),
];

/// `rest` after the first of `modules` it starts with, joined to that module by a dot instead of its underscore:
/// `self_attn_q` with `self_attn_` → `self_attn.q` (the layer's own name may hold underscores: `wi_0`).
fn dotted_after(rest: &str, modules: &[&str]) -> Option<String> {
    modules.iter().find_map(|k| rest.strip_prefix(k).map(|o| format!("{}.{o}", k.trim_end_matches('_'))))
}

/// musubi's underscore module names, back to dots: `blocks_0_self_attn_q` → `blocks.0.self_attn.q`.
fn musubi_module(m: &str) -> Option<String> {
    if let Some(rest) = m.strip_prefix("blocks_") {
        let (index, rest) = rest.split_once('_')?;
        index.parse::<u32>().ok()?;
        let rest = dotted_after(rest, &["self_attn_", "cross_attn_", "ffn_"]).unwrap_or_else(|| rest.to_string());
        return Some(format!("blocks.{index}.{rest}"));
    }
    [
        ("text_embedding_", "text_embedding."),
        ("time_embedding_", "time_embedding."),
        ("time_projection_", "time_projection."),
        ("head_head", "head.head"),
    ]
    .iter()
    .find_map(|(from, to)| m.strip_prefix(from).map(|rest| format!("{to}{rest}")))
}

/// The text encoder's layers: `text_encoder.` and transformers' UMT5 names.
const TEXT_ENCODER: &str = crate::models::wan::umt5::PREFIX;

/// kohya's underscore names for the text encoder, back to transformers' (with the prefix):
/// `encoder_block_0_layer_0_SelfAttention_q` → `text_encoder.encoder.block.0.layer.0.SelfAttention.q`.
fn text_encoder_module(m: &str) -> Option<String> {
    let (block, rest) = m.strip_prefix("encoder_block_")?.split_once("_layer_")?;
    let (layer, rest) = rest.split_once('_')?;
    block.parse::<u32>().ok()?;
    layer.parse::<u32>().ok()?;
    let sub = dotted_after(rest, &["SelfAttention_", "DenseReluDense_"])?;
    Some(format!("{TEXT_ENCODER}encoder.block.{block}.layer.{layer}.{sub}"))
}

/// The file's tensors as deltas by diffusers' layer name (on the CPU, fp32); the text encoder's layers are named
/// `text_encoder.` and transformers' UMT5 names.
pub fn normalise(tensors: Vec<(String, Tensor)>) -> Result<BTreeMap<String, Delta>> {
    if let Some((k, _)) = tensors.iter().find(|(k, _)| k.contains("dora_scale")) {
        return Err(Error::invalid(format!("{k:?}: DoRA adapters are not supported")));
    }
    // 1. Prefixes and suffixes.
    let mut parts: Vec<(String, Part, Tensor)> = Vec::with_capacity(tensors.len());
    for (key, t) in tensors {
        let (module, part) =
            SUFFIXES.iter().find_map(|(s, p)| key.strip_suffix(s).map(|m| (m.to_string(), *p))).ok_or_else(|| {
                Error::invalid(format!(
                    "key {key:?} is not a LoRA tensor (lora_A/B, lora_down/up, alpha, diff, diff_b)"
                ))
            })?;
        let module = if let Some(m) = module.strip_prefix("lora_unet_") {
            musubi_module(m).ok_or_else(|| Error::invalid(format!("key {key:?}: no Wan layer is called {m:?}")))?
        } else if let Some(m) = module.strip_prefix("lora_te_") {
            text_encoder_module(m)
                .ok_or_else(|| Error::invalid(format!("key {key:?}: no text-encoder layer is called {m:?}")))?
        } else if module.starts_with(TEXT_ENCODER) {
            module
        } else {
            ["transformer.", "model.diffusion_model.", "diffusion_model."]
                .iter()
                .find_map(|p| module.strip_prefix(p))
                .unwrap_or(&module)
                .to_string()
        };
        parts.push((module, part, t.to_kind(Kind::Float)));
    }
    // 2. The original spelling becomes diffusers', decided once for the file (the spellings share names).
    let names: Vec<String> =
        parts.iter().filter(|(m, _, _)| !m.starts_with(TEXT_ENCODER)).map(|(m, _, _)| format!("{m}.weight")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let original = keys::is_original(&names) || names.iter().any(|n| n.contains(".ffn.0.") || n.contains(".ffn.2."));
    // 3. Grouped by layer.
    #[derive(Default)]
    struct Raw {
        down: Option<Tensor>,
        up: Option<Tensor>,
        up_bias: Option<Tensor>,
        alpha: Option<f64>,
        diff: Option<Tensor>,
        diff_bias: Option<Tensor>,
    }
    let mut raw: BTreeMap<String, Raw> = BTreeMap::new();
    for (module, part, t) in parts {
        let name = if original && !module.starts_with(TEXT_ENCODER) {
            keys::to_diffusers(&format!("{module}.weight")).trim_end_matches(".weight").to_string()
        } else {
            module
        };
        let r = raw.entry(name.clone()).or_default();
        let slot = match part {
            Part::Down => &mut r.down,
            Part::Up => &mut r.up,
            Part::UpBias => &mut r.up_bias,
            Part::Diff => &mut r.diff,
            Part::DiffBias => &mut r.diff_bias,
            Part::Alpha => {
                if t.numel() != 1 {
                    return Err(Error::invalid(format!("{name}.alpha has {} values; it is one number", t.numel())));
                }
                r.alpha = Some(t.double_value(&[]));
                continue;
            }
        };
        if slot.replace(t).is_some() {
            return Err(Error::invalid(format!("layer {name:?} has the same tensor twice (two spellings?)")));
        }
    }
    // 4. Deltas.
    let mut out = BTreeMap::new();
    for (name, r) in raw {
        let is_norm = name.rsplit('.').next().is_some_and(|last| last.starts_with("norm"));
        if is_norm {
            // lightx2v's norm deltas: zeros, dropped as diffusers drops them; anything else would change the model.
            for t in [&r.diff, &r.diff_bias, &r.down, &r.up].into_iter().flatten() {
                if t.abs().max().double_value(&[]) != 0.0 {
                    return Err(Error::invalid(format!(
                        "layer {name:?}: a non-zero delta for a norm, which vgen does not apply; only linear layers"
                    )));
                }
            }
            continue;
        }
        let low_rank = match (r.down, r.up) {
            (Some(down), Some(up)) => {
                let [rank, _] = down.size()[..] else {
                    return Err(Error::invalid(format!(
                        "{name}: lora_A/lora_down is {:?}; expected [rank, in]",
                        down.size()
                    )));
                };
                if up.dim() != 2 || up.size()[1] != rank {
                    return Err(Error::invalid(format!(
                        "{name}: lora_B/lora_up is {:?}, which does not take lora_A's rank {rank}",
                        up.size()
                    )));
                }
                let scale = r.alpha.map_or(1.0, |a| a / rank as f64);
                Some((down * scale, up))
            }
            (None, None) => None,
            _ => {
                return Err(Error::invalid(format!(
                    "{name}: one of lora_A and lora_B (lora_down, lora_up) is missing"
                )));
            }
        };
        if r.alpha.is_some() && low_rank.is_none() {
            return Err(Error::invalid(format!("{name}: an alpha without lora_A and lora_B")));
        }
        if let Some(d) = &r.diff
            && d.dim() != 2
        {
            return Err(Error::invalid(format!("{name}.diff is {:?}; a linear layer's delta is [out, in]", d.size())));
        }
        let bias = match (r.up_bias, r.diff_bias) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        out.insert(name, Delta { low_rank, weight: r.diff, bias });
    }
    if out.is_empty() {
        return Err(Error::invalid("it holds no layer deltas"));
    }
    Ok(out)
}
