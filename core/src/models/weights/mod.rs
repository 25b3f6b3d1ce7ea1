//! Loading weights into a model whose module paths spell the checkpoint's keys.
//!
//! Files are memory-mapped, not read whole (tch's own reader would hold each file twice in RAM), and each tensor
//! is copied once, straight into its variable. Before anything is copied, every tensor is checked against the
//! model built from the config: a missing, extra or misshaped tensor, or one of an unexpected dtype, is an error
//! that names the file and the tensor. Safetensors and GGUF are accepted, in floats, fp8 or ggml's quantized
//! blocks ([`checkpoint`]); pickle files (`.bin`, `.pt`) never are, as loading them can run arbitrary code.

pub mod checkpoint;
pub mod ggml;
pub mod gguf;
pub mod quantize;

use crate::error::{Error, ErrorCode, Result};
pub use checkpoint::{Checkpoint, Encoding, Quantized, Storage};
use std::path::{Path, PathBuf};
use tch::nn::VarStore;

/// The weight files of one component: `{stem}.safetensors`, shards listed in `{stem}.safetensors.index.json`, or
/// one GGUF file (`{stem}.gguf`, or the only `.gguf` file in the folder, under whatever name it was downloaded).
pub fn weight_files(folder: &Path, stem: &str) -> Result<Vec<PathBuf>> {
    let single = folder.join(format!("{stem}.safetensors"));
    if single.is_file() {
        return Ok(vec![single]);
    }
    let gguf = folder.join(format!("{stem}.gguf"));
    if gguf.is_file() {
        return Ok(vec![gguf]);
    }
    let ggufs: Vec<PathBuf> = std::fs::read_dir(folder)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "gguf") && p.is_file())
        .collect();
    match ggufs.len() {
        0 => {}
        1 => return Ok(ggufs),
        _ => {
            return Err(Error::invalid(format!(
                "{} holds {} GGUF files; keep one, or name it {stem}.gguf",
                folder.display(),
                ggufs.len()
            )));
        }
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

/// Fills every variable of `vs` from the files (safetensors, or one GGUF file), under the names they spell.
/// `aliases` maps a variable name to the checkpoint key that holds it when the two differ (tied weights);
/// `ignore_prefixes` names checkpoint keys that are known and unused. See [`Checkpoint`].
pub fn load(vs: &VarStore, files: &[PathBuf], aliases: &[(&str, &str)], ignore_prefixes: &[&str]) -> Result<()> {
    Checkpoint::open(files)?.load(vs, aliases, ignore_prefixes)
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

/// How many elements the tensors of these weight files hold, from their headers alone. Each shape's product
/// is checked against overflow, so a hostile file can neither make this allocate nor wrap a count.
pub fn header_elements(files: &[PathBuf]) -> Result<u64> {
    if files.iter().any(|f| f.extension().is_some_and(|x| x == "gguf")) {
        return Ok(Checkpoint::open(files)?.elements());
    }
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

/// The names of the tensors these weight files hold, from their headers alone.
pub fn tensor_names(files: &[PathBuf]) -> Result<Vec<String>> {
    if files.iter().any(|f| f.extension().is_some_and(|x| x == "gguf")) {
        return Ok(Checkpoint::open(files)?.names().map(String::from).collect());
    }
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
