//! A checkpoint: the tensors of one component's weight files, whatever their container and encoding, under the
//! names the model's variables use.
//!
//! Containers: safetensors (one file or shards) and GGUF. Encodings: the float types; `float8_e4m3fn`, with or
//! without a scale per tensor or per output channel (ComfyUI's and lightx2v's "scaled fp8": `X.scale_weight`,
//! or `X.weight_scale`); and ggml's blocks ([`GgmlType`]). Names are normalised once, when the checkpoint is
//! opened: the `model.diffusion_model.` and `diffusion_model.` prefixes ComfyUI writes are dropped, and a family
//! may rename the rest (Wan's original key names to diffusers', `wan::keys`).
//!
//! Filling a model: a variable of kind `Uint8` is a quantized slot (see [`super::super::linear::Linear`]) and
//! takes the stored bytes as they are; any other variable takes the tensor decoded to floats. Every tensor is
//! checked against the model first, as the safetensors loader always did: missing, extra and misshaped tensors
//! are errors that name the file and the tensor.

use super::ggml::GgmlType;
use super::gguf::Gguf;
use crate::error::{Error, ErrorCode, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor, nn::VarStore};

/// How a tensor's values are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Float(Kind),
    Fp8E4m3,
    Ggml(GgmlType),
}

impl Encoding {
    /// Whether a layer can keep the tensor in this encoding and upcast it when it computes.
    pub fn is_quantized(self) -> bool {
        match self {
            Encoding::Float(_) => false,
            Encoding::Fp8E4m3 => true,
            Encoding::Ggml(g) => g.is_quantized(),
        }
    }

    pub fn name(self) -> String {
        match self {
            Encoding::Float(k) => format!("{k:?}"),
            Encoding::Fp8E4m3 => "float8_e4m3fn".into(),
            Encoding::Ggml(g) => g.name().into(),
        }
    }

    /// The shape of the bytes of a tensor of logical `shape` in this encoding, as a quantized slot holds them:
    /// the innermost dimension becomes its encoded bytes.
    pub fn stored_shape(self, shape: &[i64]) -> Result<Vec<i64>> {
        let mut out = shape.to_vec();
        if let (Encoding::Ggml(g), Some(last)) = (self, out.last_mut()) {
            *last = g.row_bytes(*last)?;
        }
        Ok(out)
    }
}

/// A quantized weight as a layer holds it: its encoding, and for scaled fp8 the shape of its scale.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantized {
    pub encoding: Encoding,
    pub scale_shape: Option<Vec<i64>>,
}

/// Which weights of a checkpoint are quantized, by variable name (`blocks.0.attn1.to_q.weight`). A model's
/// builder asks it, per layer, whether to make a quantized slot instead of a float weight.
#[derive(Clone, Debug, Default)]
pub struct Storage(HashMap<String, Quantized>);

impl Storage {
    /// Every weight in floats.
    pub fn dense() -> Self {
        Self::default()
    }
    /// Storage from (variable name, how it is quantized) pairs.
    pub fn from_entries(entries: impl IntoIterator<Item = (String, Quantized)>) -> Self {
        Self(entries.into_iter().collect())
    }
    pub fn get(&self, name: &str) -> Option<&Quantized> {
        self.0.get(name)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

struct Entry {
    file: usize,
    encoding: Encoding,
    shape: Vec<i64>,
    start: usize,
    len: usize,
}

/// The suffix of a scaled fp8 weight's scale, after normalisation.
const SCALE: &str = ".scale_weight";
/// Tensors ComfyUI's scaled fp8 files carry that no model uses: the format marker and the activation scales of
/// its fp8 matmul.
const FP8_EXTRAS: [&str; 2] = ["scaled_fp8", ".scale_input"];

pub struct Checkpoint {
    files: Vec<(PathBuf, memmap2::Mmap)>,
    entries: BTreeMap<String, Entry>,
}

fn map(path: &Path) -> Result<memmap2::Mmap> {
    let file =
        std::fs::File::open(path).map_err(|e| Error::new(ErrorCode::NotFound, format!("{}: {e}", path.display())))?;
    // SAFETY: the map is read-only and lives only while the model is filled from it; a file changed underneath
    // us by another process could give wrong weights but not unsoundness in safe code that reads bytes.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::new(ErrorCode::Io, format!("{}: {e}", path.display())))
}

fn encoding_of(dtype: Dtype) -> Option<Encoding> {
    Some(match dtype {
        Dtype::F32 => Encoding::Float(Kind::Float),
        Dtype::F16 => Encoding::Float(Kind::Half),
        Dtype::BF16 => Encoding::Float(Kind::BFloat16),
        Dtype::F64 => Encoding::Float(Kind::Double),
        Dtype::F8_E4M3 => Encoding::Fp8E4m3,
        _ => return None,
    })
}

/// A name as a checkpoint spells it, without ComfyUI's prefixes and with lightx2v's scale suffix in ComfyUI's
/// spelling.
fn normalise(name: &str) -> String {
    let name =
        name.strip_prefix("model.diffusion_model.").or_else(|| name.strip_prefix("diffusion_model.")).unwrap_or(name);
    match name.strip_suffix(".weight_scale") {
        Some(base) => format!("{base}{SCALE}"),
        None => name.to_string(),
    }
}

impl Checkpoint {
    /// Opens weight files (all safetensors, or one GGUF file), with the common normalisation of names.
    pub fn open(files: &[PathBuf]) -> Result<Self> {
        let mut maps = Vec::with_capacity(files.len());
        let mut entries = BTreeMap::new();
        for (i, path) in files.iter().enumerate() {
            let bytes = map(path)?;
            let mut add = |name: &str, entry: Entry| -> Result<()> {
                let key = normalise(name);
                if let Some(prior) = entries.insert(key.clone(), entry) {
                    return Err(Error::invalid(format!(
                        "tensor {key:?} appears in both {} and {}",
                        files[prior.file].display(),
                        path.display()
                    )));
                }
                Ok(())
            };
            if path.extension().is_some_and(|e| e == "gguf") {
                let gguf =
                    Gguf::parse(&bytes).map_err(|e| Error::invalid(format!("{}: {}", path.display(), e.message())))?;
                for t in gguf.tensors {
                    add(
                        &t.name,
                        Entry { file: i, encoding: Encoding::Ggml(t.ggml), shape: t.shape, start: t.start, len: t.len },
                    )?;
                }
            } else {
                let st = SafeTensors::deserialize(&bytes).map_err(|e| {
                    Error::invalid(format!(
                        "{} is not a valid safetensors file (truncated or corrupt?): {e}",
                        path.display()
                    ))
                })?;
                for (name, view) in st.tensors() {
                    let encoding = encoding_of(view.dtype()).ok_or_else(|| {
                        Error::invalid(format!(
                            "tensor {name:?} in {} has dtype {:?}; expected a float type",
                            path.display(),
                            view.dtype()
                        ))
                    })?;
                    let start = view.data().as_ptr() as usize - bytes.as_ptr() as usize;
                    let shape = view.shape().iter().map(|d| *d as i64).collect();
                    add(&name, Entry { file: i, encoding, shape, start, len: view.data().len() })?;
                }
            }
            maps.push((path.clone(), bytes));
        }
        Ok(Self { files: maps, entries })
    }

    /// The checkpoint with every tensor renamed by `rename` (a family's own key names to the ones its model uses).
    pub fn renamed(self, rename: impl Fn(&str) -> String) -> Result<Self> {
        let mut entries = BTreeMap::new();
        for (name, e) in self.entries {
            let key = rename(&name);
            if entries.contains_key(&key) {
                return Err(Error::invalid(format!("two tensors become {key:?} ({name:?} is one)")));
            }
            entries.insert(key, e);
        }
        Ok(Self { files: self.files, entries })
    }

    /// The names of the tensors.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// How many values the tensors hold (scales and markers included).
    pub fn elements(&self) -> u64 {
        self.entries.values().map(|e| e.shape.iter().product::<i64>() as u64).sum()
    }

    /// The quantized weights: 2-D tensors in fp8 or a ggml block type, with their scales.
    pub fn storage(&self) -> Result<Storage> {
        let mut out = HashMap::new();
        for (name, e) in &self.entries {
            if !e.encoding.is_quantized() || e.shape.len() != 2 || name.ends_with(SCALE) {
                continue;
            }
            let scale_shape = match name.strip_suffix(".weight") {
                Some(base) => self.entries.get(&format!("{base}{SCALE}")).map(|s| s.shape.clone()),
                None => None,
            };
            if let Some(s) = &scale_shape {
                let n: i64 = s.iter().product();
                if n != 1 && n != e.shape[0] {
                    return Err(Error::invalid(format!(
                        "{}: the scale of {name:?} has shape {s:?}; expected one value or one per output ({})",
                        self.file_of(e).display(),
                        e.shape[0]
                    )));
                }
            }
            out.insert(name.clone(), Quantized { encoding: e.encoding, scale_shape });
        }
        Ok(Storage(out))
    }

    fn file_of(&self, e: &Entry) -> &Path {
        &self.files[e.file].0
    }

    fn bytes(&self, e: &Entry) -> &[u8] {
        &self.files[e.file].1[e.start..e.start + e.len]
    }

    /// The tensor `name` decoded to floats (fp32 for the quantized encodings, a scaled fp8 tensor's scale applied).
    pub fn decoded(&self, name: &str) -> Result<Tensor> {
        let e = self.entries.get(name).ok_or_else(|| Error::invalid(format!("no tensor {name:?}")))?;
        self.decode(name, e)
    }

    /// The tensor `name` decoded to floats, and the float type it was stored in (fp32 for fp8 and ggml's blocks).
    pub fn decoded_with_kind(&self, name: &str) -> Result<(Tensor, Kind)> {
        let e = self.entries.get(name).ok_or_else(|| Error::invalid(format!("no tensor {name:?}")))?;
        let kind = match e.encoding {
            Encoding::Float(k) => k,
            Encoding::Ggml(GgmlType::F16) => Kind::Half,
            Encoding::Ggml(GgmlType::BF16) => Kind::BFloat16,
            _ => Kind::Float,
        };
        Ok((self.decode(name, e)?, kind))
    }

    fn decode(&self, name: &str, e: &Entry) -> Result<Tensor> {
        let bytes = self.bytes(e);
        Ok(match e.encoding {
            Encoding::Float(kind) => Tensor::f_from_data_size(bytes, &e.shape, kind)?,
            Encoding::Fp8E4m3 => {
                let w = Tensor::f_from_data_size(bytes, &e.shape, Kind::Uint8)?.view_dtype(Kind::Float8e4m3fn);
                let w = w.to_kind(Kind::Float);
                match name.strip_suffix(".weight").and_then(|b| self.entries.get(&format!("{b}{SCALE}"))) {
                    Some(s) => {
                        w * self.decode("scale", s)?.to_kind(Kind::Float).reshape(scale_view(&e.shape, &s.shape))
                    }
                    None => w,
                }
            }
            Encoding::Ggml(g) => {
                let raw = Tensor::f_from_data_size(bytes, &[bytes.len() as i64], Kind::Uint8)?;
                g.dequantize(&raw, &e.shape)?
            }
        })
    }

    /// Fills every variable of `vs`. `aliases` maps a variable name to the checkpoint key that holds it when the
    /// two differ (tied weights); `ignore_prefixes` names checkpoint keys that are known and unused.
    pub fn load(&self, vs: &VarStore, aliases: &[(&str, &str)], ignore_prefixes: &[&str]) -> Result<()> {
        let alias: HashMap<&str, &str> = aliases.iter().copied().collect();
        let variables: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
        let mut used = HashSet::new();
        let mut plan = Vec::with_capacity(variables.len());
        for (name, var) in &variables {
            let key = alias.get(name.as_str()).copied().unwrap_or(name.as_str());
            let e = self
                .entries
                .get(key)
                .ok_or_else(|| Error::invalid(format!("tensor {key:?} is missing from {}", self.display_files())))?;
            let slot = var.kind() == Kind::Uint8;
            let expected = if slot { e.encoding.stored_shape(&e.shape)? } else { e.shape.clone() };
            if expected != var.size() {
                let what = if slot { "stored as" } else { "has shape" };
                return Err(Error::invalid(format!(
                    "tensor {key:?} in {} {what} {expected:?} ({}), but the model expects {:?}",
                    self.file_of(e).display(),
                    e.encoding.name(),
                    var.size()
                )));
            }
            used.insert(key.to_string());
            if !slot && e.encoding == Encoding::Fp8E4m3 {
                used.insert(format!("{}{SCALE}", key.strip_suffix(".weight").unwrap_or(key)));
            }
            plan.push((var.shallow_clone(), key, e, slot));
        }
        let mut extra: Vec<&String> = self
            .entries
            .keys()
            .filter(|k| {
                !used.contains(*k)
                    && !ignore_prefixes.iter().any(|p| k.starts_with(p))
                    && !FP8_EXTRAS.iter().any(|x| k.as_str() == x.trim_start_matches('.') || k.ends_with(x))
            })
            .collect();
        if !extra.is_empty() {
            extra.sort();
            return Err(Error::invalid(format!(
                "{} holds tensors this config has no place for: {}",
                self.display_files(),
                extra.iter().take(8).map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        let _guard = tch::no_grad_guard();
        for (mut var, key, e, slot) in plan {
            let t = if slot {
                Tensor::f_from_data_size(self.bytes(e), &var.size(), Kind::Uint8)?
            } else {
                self.decode(key, e)?
            };
            var.f_copy_(&t)?;
        }
        Ok(())
    }

    fn display_files(&self) -> String {
        self.files.iter().map(|(f, _)| f.display().to_string()).collect::<Vec<_>>().join(", ")
    }
}

/// The shape a scale of `scale` takes to broadcast over a weight of `weight` (one value, or one per output row).
pub fn scale_view(weight: &[i64], scale: &[i64]) -> Vec<i64> {
    if scale.iter().product::<i64>() == 1 {
        vec![1; weight.len()]
    } else {
        let mut v = vec![1; weight.len()];
        v[0] = weight[0];
        v
    }
}
