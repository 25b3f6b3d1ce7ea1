//! `vgen quantize`: a model folder rewritten with its transformers' weights quantized, which vgen then loads like
//! any other folder.
//!
//! Every file is copied as it is except the weights of `transformer/` and `transformer_2/`. There, the matrices
//! of the repeated blocks (`blocks.N.….weight`, 2-D: the linear layers, nearly all of a Wan transformer's
//! parameters) are quantized; the embedders, norms, tables and the output head keep the source's float type, as
//! ComfyUI-GGUF's and lightx2v's converters keep them, since they are small and sensitive.
//! - `fp8`: `float8_e4m3fn` with one fp32 scale per matrix (`X.scale_weight` = absmax / 448), in
//!   `diffusion_pytorch_model.safetensors`, ComfyUI's "scaled fp8" layout under diffusers' names.
//! - `q8_0`, `q4_k`: `diffusion_pytorch_model.gguf`. A matrix whose rows are not whole Q4_K blocks (256 values)
//!   falls back to Q4_1 (32), as llama.cpp falls back from the k-quants; one whose rows are not whole blocks of
//!   32 stays in floats. Tensors of more than 4 dimensions (the patch embedding) are stored flattened with their
//!   shape in `comfy.gguf.orig_shape.{name}`.

use super::checkpoint::{Checkpoint, Encoding, Quantized, Storage};
use super::ggml::GgmlType;
use super::gguf::{self, TensorOut};
use crate::error::{Error, ErrorCode, Result};
use std::path::Path;
use tch::{Kind, Tensor};

/// The formats `vgen quantize` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Fp8,
    Q8_0,
    Q4K,
}

impl std::str::FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "fp8" => Ok(Format::Fp8),
            "q8_0" => Ok(Format::Q8_0),
            "q4_k" => Ok(Format::Q4K),
            other => Err(Error::invalid(format!("quantization format {other:?}: expected fp8, q8_0 or q4_k"))),
        }
    }
}

/// What one quantization wrote.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    /// Matrices quantized, by the encoding they got.
    pub quantized: std::collections::BTreeMap<String, usize>,
    /// Tensors kept in floats.
    pub kept: usize,
    /// Bytes of the transformers' weights before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
}

const TRANSFORMERS: [&str; 2] = ["transformer", "transformer_2"];
const STEM: &str = "diffusion_pytorch_model";

/// Writes `src` quantized to `format` into `dst`, which must not exist yet (nothing is overwritten).
pub fn quantize_model(src: &Path, dst: &Path, format: Format) -> Result<Report> {
    if !src.join("model_index.json").is_file() {
        return Err(Error::new(
            ErrorCode::NotFound,
            format!("{} is not a model folder (it has no model_index.json)", src.display()),
        ));
    }
    if dst.exists() {
        return Err(Error::invalid(format!("{} exists; vgen quantize writes a new folder", dst.display())));
    }
    super::check_confined(src)?;
    let staging = dst.with_extension("partial");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    let result = write_all(src, &staging, format);
    match result {
        Ok(report) => {
            std::fs::rename(&staging, dst)?;
            Ok(report)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

fn write_all(src: &Path, dst: &Path, format: Format) -> Result<Report> {
    let mut report = Report::default();
    copy_tree(src, dst, &|rel| {
        let mut parts = rel.components();
        let top = parts.next().map(|c| c.as_os_str().to_string_lossy().into_owned());
        let file = rel.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        top.is_some_and(|t| TRANSFORMERS.contains(&t.as_str()))
            && rel.components().count() == 2
            && (file.starts_with(STEM) || file.ends_with(".gguf"))
    })?;
    for component in TRANSFORMERS {
        let folder = src.join(component);
        if !folder.is_dir() {
            continue;
        }
        let files = super::weight_files(&folder, STEM)?;
        report.bytes_before += files.iter().filter_map(|f| f.metadata().ok()).map(|m| m.len()).sum::<u64>();
        let checkpoint = Checkpoint::open(&files)?;
        let out = match format {
            Format::Fp8 => dst.join(component).join(format!("{STEM}.safetensors")),
            _ => dst.join(component).join(format!("{STEM}.gguf")),
        };
        write_component(&checkpoint, &out, format, &mut report)?;
        report.bytes_after += out.metadata()?.len();
    }
    Ok(report)
}

/// Copies every file of `src` into `dst` except those `skip` names (relative paths).
fn copy_tree(src: &Path, dst: &Path, skip: &dyn Fn(&Path) -> bool) -> Result<()> {
    let mut pending = vec![std::path::PathBuf::new()];
    while let Some(rel) = pending.pop() {
        std::fs::create_dir_all(dst.join(&rel))?;
        for entry in std::fs::read_dir(src.join(&rel))? {
            let entry = entry?;
            let rel_child = rel.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                pending.push(rel_child);
            } else if !skip(&rel_child) {
                std::fs::copy(entry.path(), dst.join(&rel_child))?;
            }
        }
    }
    Ok(())
}

impl Format {
    /// The encoding a block matrix with rows of `row` values gets; `None` when its rows are not whole blocks of
    /// any the format allows (it then stays in floats).
    pub fn encoding_for(self, row: i64) -> Option<Encoding> {
        match self {
            Format::Fp8 => Some(Encoding::Fp8E4m3),
            Format::Q8_0 if row % 32 == 0 => Some(Encoding::Ggml(GgmlType::Q8_0)),
            Format::Q4K if row % 256 == 0 => Some(Encoding::Ggml(GgmlType::Q4K)),
            Format::Q4K if row % 32 == 0 => Some(Encoding::Ggml(GgmlType::Q4_1)),
            _ => None,
        }
    }
}

/// The storage `vgen quantize` gives a Wan transformer of this config, without reading any weights: for models
/// built from a config alone (benchmarks, memory estimates).
pub fn block_storage(config: &crate::models::wan::transformer::TransformerConfig, format: Format) -> Storage {
    let dim = config.inner_dim();
    let mut layers = Vec::new();
    for i in 0..config.num_layers {
        for attn in ["attn1", "attn2"] {
            for m in ["to_q", "to_k", "to_v", "to_out.0"] {
                layers.push((format!("blocks.{i}.{attn}.{m}.weight"), dim));
            }
        }
        if config.added_kv_proj_dim.is_some() {
            layers.push((format!("blocks.{i}.attn2.add_k_proj.weight"), dim));
            layers.push((format!("blocks.{i}.attn2.add_v_proj.weight"), dim));
        }
        layers.push((format!("blocks.{i}.ffn.net.0.proj.weight"), dim));
        layers.push((format!("blocks.{i}.ffn.net.2.weight"), config.ffn_dim));
    }
    let scale = (format == Format::Fp8).then(Vec::new);
    Storage::from_entries(layers.into_iter().filter_map(|(name, row)| {
        let encoding = format.encoding_for(row)?;
        Some((name, Quantized { encoding, scale_shape: scale.clone() }))
    }))
}

/// Fills every quantized slot of `vs` with the encoding of random values (scales 1): a model to time and measure.
pub fn fill_random(vs: &tch::nn::VarStore, storage: &Storage) -> Result<()> {
    let _guard = tch::no_grad_guard();
    for (name, mut var) in vs.variables() {
        let Some(q) = storage.get(&name) else { continue };
        let [rows, _] = var.size()[..] else { continue };
        let row: i64 = match q.encoding {
            Encoding::Ggml(g) => var.size()[1] / g.block_bytes() * g.block_elements(),
            _ => var.size()[1],
        };
        // 64 random rows, encoded once and repeated: the values do not matter, the bytes' layout does.
        let sample = Tensor::randn([64.min(rows), row], (Kind::Float, tch::Device::Cpu)) * 0.02;
        let encoded = match q.encoding {
            Encoding::Ggml(g) => g.quantize(&sample)?,
            _ => (sample / (0.1 / 448.0)).to_kind(Kind::Float8e4m3fn).view_dtype(Kind::Uint8),
        };
        let reps = (rows + 63) / 64;
        var.copy_(&encoded.repeat([reps, 1]).narrow(0, 0, rows).to_device(var.device()));
    }
    for (name, mut var) in vs.variables() {
        if name.ends_with(".scale_weight") {
            let _ = var.fill_(0.1 / 448.0);
        }
    }
    Ok(())
}

/// Whether the tensor `name` of `shape` is one of the blocks' matrices, which quantization is for.
fn is_block_matrix(name: &str, shape: &[i64]) -> bool {
    shape.len() == 2 && name.starts_with("blocks.") && name.ends_with(".weight")
}

fn write_component(checkpoint: &Checkpoint, out: &Path, format: Format, report: &mut Report) -> Result<()> {
    let names: Vec<String> = checkpoint.names().map(String::from).collect();
    let mut tensors: Vec<(String, Vec<i64>, Encoded)> = Vec::with_capacity(names.len());
    for name in &names {
        if name.ends_with(".scale_weight") || name == "scaled_fp8" || name.ends_with(".scale_input") {
            continue; // a source in scaled fp8: its scales were applied when the weight was decoded
        }
        let (value, source_kind) = checkpoint.decoded_with_kind(name)?;
        let shape = value.size();
        let target = if is_block_matrix(name, &shape) { format.encoding_for(shape[1]) } else { None };
        let encoded = if let Some(target) = target {
            let e = match target {
                Encoding::Ggml(g) => Encoded::Ggml(g, bytes(&g.quantize(&value)?)),
                _ => fp8(&value),
            };
            *report.quantized.entry(e.name()).or_default() += 1;
            e
        } else {
            report.kept += 1;
            match format {
                Format::Fp8 => Encoded::Float(value.to_kind(source_kind)),
                _ => {
                    let g = match source_kind {
                        Kind::Half => GgmlType::F16,
                        Kind::BFloat16 => GgmlType::BF16,
                        _ => GgmlType::F32,
                    };
                    Encoded::Ggml(g, bytes(&g.quantize(&value.reshape([-1]))?))
                }
            }
        };
        tensors.push((name.clone(), shape, encoded));
    }
    match format {
        Format::Fp8 => write_safetensors(out, &tensors),
        _ => write_gguf(out, &tensors),
    }
}

enum Encoded {
    Float(Tensor),
    Fp8 { bytes: Vec<u8>, scale: f32 },
    Ggml(GgmlType, Vec<u8>),
}

impl Encoded {
    fn name(&self) -> String {
        match self {
            Encoded::Float(t) => format!("{:?}", t.kind()),
            Encoded::Fp8 { .. } => "float8_e4m3fn".into(),
            Encoded::Ggml(g, _) => g.name().into(),
        }
    }
}

fn bytes(t: &Tensor) -> Vec<u8> {
    let t = t.contiguous().view_dtype(Kind::Uint8).reshape([-1]);
    let n = t.numel();
    let mut out = vec![0u8; n];
    t.copy_data_u8(&mut out, n);
    out
}

/// One scale per matrix: absmax / 448, the largest finite `float8_e4m3fn`.
fn fp8(value: &Tensor) -> Encoded {
    let absmax = value.abs().max().double_value(&[]) as f32;
    let scale = if absmax > 0.0 { absmax / 448.0 } else { 1.0 };
    let q = (value.to_kind(Kind::Float) / scale as f64).to_kind(Kind::Float8e4m3fn);
    Encoded::Fp8 { bytes: bytes(&q), scale }
}

fn write_safetensors(out: &Path, tensors: &[(String, Vec<i64>, Encoded)]) -> Result<()> {
    use safetensors::{Dtype, tensor::TensorView};
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, shape, e) in tensors {
        let dims: Vec<usize> = shape.iter().map(|d| *d as usize).collect();
        match e {
            Encoded::Float(t) => {
                let dtype = match t.kind() {
                    Kind::Half => Dtype::F16,
                    Kind::BFloat16 => Dtype::BF16,
                    _ => Dtype::F32,
                };
                owned.push((
                    name.clone(),
                    dtype,
                    dims,
                    bytes(&t.to_kind(if dtype == Dtype::F32 { Kind::Float } else { t.kind() })),
                ));
            }
            Encoded::Fp8 { bytes, scale } => {
                owned.push((name.clone(), Dtype::F8_E4M3, dims, bytes.clone()));
                let base = name.strip_suffix(".weight").unwrap_or(name);
                owned.push((format!("{base}.scale_weight"), Dtype::F32, vec![], scale.to_le_bytes().to_vec()));
            }
            Encoded::Ggml(..) => return Err(Error::internal("a ggml tensor in a safetensors file")),
        }
    }
    let views = owned
        .iter()
        .map(|(n, d, s, b)| {
            TensorView::new(*d, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::internal(format!("tensor {n:?}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(metadata), out)
        .map_err(|e| Error::new(ErrorCode::Io, format!("{}: {e}", out.display())))
}

fn write_gguf(out: &Path, tensors: &[(String, Vec<i64>, Encoded)]) -> Result<()> {
    let mut metadata: Vec<(String, gguf::Value)> = vec![
        ("general.architecture".into(), gguf::Value::Str("wan".into())),
        ("general.quantized_by".into(), gguf::Value::Str(format!("vgen {}", env!("CARGO_PKG_VERSION")))),
    ];
    let mut outs = Vec::with_capacity(tensors.len());
    let flat: Vec<Vec<i64>> = tensors
        .iter()
        .map(|(name, shape, _)| {
            if shape.len() > 4 {
                metadata.push((
                    format!("comfy.gguf.orig_shape.{name}"),
                    gguf::Value::Array(shape.iter().map(|d| gguf::Value::Int(*d)).collect()),
                ));
                vec![shape[0], shape[1..].iter().product()]
            } else if shape.is_empty() {
                vec![1]
            } else {
                shape.clone()
            }
        })
        .collect();
    for ((name, _, e), shape) in tensors.iter().zip(&flat) {
        let Encoded::Ggml(g, bytes) = e else { return Err(Error::internal("a float tensor in a GGUF file")) };
        outs.push(TensorOut { name, shape, ggml: *g, bytes });
    }
    gguf::write(out, &metadata, &outs)
}
