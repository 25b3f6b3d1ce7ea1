//! Loading safetensors weights into a model whose module paths spell the checkpoint's keys.
//!
//! Files are memory-mapped, not read whole (tch's own reader would hold each file twice in RAM), and each tensor
//! is copied once, straight into its variable. Before anything is copied, every tensor is checked against the
//! model built from the config: a missing, extra or misshaped tensor, or one of an unexpected dtype, is an error
//! that names the file and the tensor. Only safetensors is accepted; pickle files (`.bin`, `.pt`) never are, as
//! loading them can run arbitrary code.

use crate::error::{Error, ErrorCode, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor, nn::VarStore};

/// The weight files of one component: `{stem}.safetensors`, or shards listed in `{stem}.safetensors.index.json`.
pub fn weight_files(folder: &Path, stem: &str) -> Result<Vec<PathBuf>> {
    let single = folder.join(format!("{stem}.safetensors"));
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = folder.join(format!("{stem}.safetensors.index.json"));
    if index.is_file() {
        let text = std::fs::read_to_string(&index)?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::invalid(format!("{}: {e}", index.display())))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::invalid(format!("{}: no weight_map", index.display())))?;
        if let Some(bad) = map.values().filter_map(|v| v.as_str()).find(|f| {
            let p = Path::new(f);
            p.is_absolute() || p.components().any(|c| !matches!(c, std::path::Component::Normal(_)))
        }) {
            return Err(Error::invalid(format!(
                "{}: shard {bad:?} is not a file name inside the folder",
                index.display()
            )));
        }
        let mut files: Vec<PathBuf> = map
            .values()
            .filter_map(|v| v.as_str())
            .map(|f| folder.join(f))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        files.dedup();
        if let Some(missing) = files.iter().find(|f| !f.is_file()) {
            return Err(Error::new(
                ErrorCode::NotFound,
                format!("shard {} listed in {} is missing", missing.display(), index.display()),
            ));
        }
        return Ok(files);
    }
    let pickles: Vec<String> = std::fs::read_dir(folder)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".bin") || n.ends_with(".pt") || n.ends_with(".pth") || n.ends_with(".ckpt"))
        .collect();
    if !pickles.is_empty() {
        return Err(Error::invalid(format!(
            "{} has only pickle weights ({}); vgen loads safetensors only: convert them to {stem}.safetensors",
            folder.display(),
            pickles.join(", ")
        )));
    }
    Err(Error::new(ErrorCode::NotFound, format!("no weights in {}: expected {stem}.safetensors", folder.display())))
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        _ => return None,
    })
}

/// Fills every variable of `vs` from the files. `aliases` maps a variable name to the checkpoint key that holds
/// it when the two differ (tied weights); `ignore_prefixes` names checkpoint keys that are known and unused.
pub fn load(vs: &VarStore, files: &[PathBuf], aliases: &[(&str, &str)], ignore_prefixes: &[&str]) -> Result<()> {
    let maps: Vec<(PathBuf, memmap2::Mmap)> = files
        .iter()
        .map(|f| {
            let file =
                std::fs::File::open(f).map_err(|e| Error::new(ErrorCode::NotFound, format!("{}: {e}", f.display())))?;
            // SAFETY: the map is read-only and lives only while we copy out of it; a file changed underneath us by
            // another process could give wrong weights but not unsoundness in safe code that reads bytes.
            let map = unsafe { memmap2::Mmap::map(&file) }
                .map_err(|e| Error::new(ErrorCode::Io, format!("{}: {e}", f.display())))?;
            Ok((f.clone(), map))
        })
        .collect::<Result<_>>()?;
    let mut tensors: HashMap<String, (usize, safetensors::tensor::TensorView<'_>)> = HashMap::new();
    for (i, (path, map)) in maps.iter().enumerate() {
        let st = SafeTensors::deserialize(map).map_err(|e| {
            Error::invalid(format!("{} is not a valid safetensors file (truncated or corrupt?): {e}", path.display()))
        })?;
        for (name, view) in st.tensors() {
            if let Some((j, _)) = tensors.get(&name) {
                return Err(Error::invalid(format!(
                    "tensor {name:?} appears in both {} and {}",
                    maps[*j].0.display(),
                    path.display()
                )));
            }
            tensors.insert(name, (i, view));
        }
    }
    let alias: HashMap<&str, &str> = aliases.iter().copied().collect();
    let variables: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let mut used = std::collections::HashSet::new();
    let mut plan = Vec::with_capacity(variables.len());
    for (name, var) in &variables {
        let key = alias.get(name.as_str()).copied().unwrap_or(name.as_str());
        let (file, view) = tensors
            .get(key)
            .ok_or_else(|| Error::invalid(format!("tensor {key:?} is missing from {}", display_files(files))))?;
        let shape: Vec<i64> = view.shape().iter().map(|d| *d as i64).collect();
        if shape != var.size() {
            return Err(Error::invalid(format!(
                "tensor {key:?} in {} has shape {shape:?}, but the config gives {:?}",
                files[*file].display(),
                var.size()
            )));
        }
        let kind = kind_of(view.dtype()).ok_or_else(|| {
            Error::invalid(format!(
                "tensor {key:?} in {} has dtype {:?}; expected a float type",
                files[*file].display(),
                view.dtype()
            ))
        })?;
        used.insert(key.to_string());
        plan.push((var.shallow_clone(), view.data(), shape, kind));
    }
    let mut extra: Vec<&String> =
        tensors.keys().filter(|k| !used.contains(*k) && !ignore_prefixes.iter().any(|p| k.starts_with(p))).collect();
    if !extra.is_empty() {
        extra.sort();
        return Err(Error::invalid(format!(
            "{} holds tensors this config has no place for: {}",
            display_files(files),
            extra.iter().take(8).map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        )));
    }
    let _guard = tch::no_grad_guard();
    for (mut var, data, shape, kind) in plan {
        let t = Tensor::f_from_data_size(data, &shape, kind)?;
        var.f_copy_(&t)?;
    }
    Ok(())
}

/// The largest safetensors header vgen reads (the format's own reader refuses more than this too).
const MAX_HEADER_BYTES: u64 = 100 << 20;

/// The JSON header of a safetensors file. Its length is checked against the file's size before it is read, so a
/// hostile file cannot make this allocate more than the file holds.
fn header(path: &Path) -> Result<serde_json::Map<String, serde_json::Value>> {
    use std::io::Read;
    let bad = |why: String| Error::invalid(format!("{} is not a valid safetensors file: {why}", path.display()));
    let mut file =
        std::fs::File::open(path).map_err(|e| Error::new(ErrorCode::NotFound, format!("{}: {e}", path.display())))?;
    let len = file.metadata()?.len();
    let mut prefix = [0u8; 8];
    file.read_exact(&mut prefix).map_err(|_| bad(format!("it has {len} bytes, too few for a header")))?;
    let header_len = u64::from_le_bytes(prefix);
    if header_len > len - 8 || header_len > MAX_HEADER_BYTES {
        return Err(bad(format!("its header claims {header_len} bytes but the file has {len}")));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)?;
    serde_json::from_slice(&header).map_err(|e| bad(format!("its header is not a JSON object: {e}")))
}

/// How many elements the tensors of these safetensors files hold, from their headers alone. Each shape's product
/// is checked against overflow, so a hostile file can neither make this allocate nor wrap a count.
pub fn header_elements(files: &[PathBuf]) -> Result<u64> {
    let mut total = 0u64;
    for path in files {
        let bad = |why: String| Error::invalid(format!("{} is not a valid safetensors file: {why}", path.display()));
        for (name, entry) in header(path)?.iter().filter(|(n, _)| n.as_str() != "__metadata__") {
            let shape = entry
                .get("shape")
                .and_then(|s| s.as_array())
                .ok_or_else(|| bad(format!("tensor {name:?} has no shape")))?;
            let elements = shape.iter().try_fold(1u64, |n, d| d.as_u64().and_then(|d| n.checked_mul(d)));
            let elements = elements.ok_or_else(|| {
                bad(format!("the shape of tensor {name:?} is not a list of sizes whose product fits 64 bits"))
            })?;
            total = total.checked_add(elements).ok_or_else(|| bad("its element count overflows".into()))?;
        }
    }
    Ok(total)
}

/// The names of the tensors these safetensors files hold, from their headers alone.
pub fn tensor_names(files: &[PathBuf]) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for path in files {
        names.extend(header(path)?.into_iter().map(|(n, _)| n).filter(|n| n != "__metadata__"));
    }
    Ok(names)
}

/// Refuses a model folder with a symbolic link that leads outside it: a model is a folder of files, and opening
/// one must never read anything else on the machine.
pub fn check_confined(folder: &Path) -> Result<()> {
    let root =
        folder.canonicalize().map_err(|e| Error::new(ErrorCode::NotFound, format!("{}: {e}", folder.display())))?;
    let mut pending = vec![(folder.to_path_buf(), 0)];
    let mut seen = 0usize;
    while let Some((dir, depth)) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            seen += 1;
            if seen > 10_000 {
                return Err(Error::invalid(format!(
                    "{} holds more than 10,000 files; is it a model folder?",
                    folder.display()
                )));
            }
            let path = entry.path();
            let kind = entry.file_type()?;
            if kind.is_symlink() {
                let target = path
                    .canonicalize()
                    .map_err(|e| Error::invalid(format!("{} is a broken link: {e}", path.display())))?;
                if !target.starts_with(&root) {
                    return Err(Error::invalid(format!(
                        "{} links to {}, outside the model folder; copy the file in instead",
                        path.display(),
                        target.display()
                    )));
                }
            } else if kind.is_dir() && depth < 4 {
                pending.push((path, depth + 1));
            }
        }
    }
    Ok(())
}

fn display_files(files: &[PathBuf]) -> String {
    files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// Reads a component's `config.json` into its config type, naming the file in any error.
pub fn read_config<T: serde::de::DeserializeOwned>(folder: &Path) -> Result<T> {
    read_json(&folder.join("config.json"))
}

/// A JSON file read into `T`; an error names the file and the field.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::new(ErrorCode::NotFound, format!("{}: {e}", path.display())))?;
    let mut de = serde_json::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(&mut de)
        .map_err(|e| Error::invalid(format!("{}: field `{}`: {}", path.display(), e.path(), e.inner())))
}

/// A short hash of the weight files' contents (their size and first and last megabyte), for cache keys.
pub fn fingerprint(files: &[PathBuf]) -> Result<String> {
    use std::hash::{Hash, Hasher};
    use std::io::{Read, Seek, SeekFrom};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in files {
        let mut file = std::fs::File::open(f)?;
        let len = file.metadata()?.len();
        len.hash(&mut h);
        let mut buf = vec![0u8; (1 << 20).min(len as usize)];
        file.read_exact(&mut buf)?;
        buf.hash(&mut h);
        file.seek(SeekFrom::Start(len - buf.len() as u64))?;
        file.read_exact(&mut buf)?;
        buf.hash(&mut h);
    }
    Ok(format!("{:016x}", h.finish()))
}
