//! GGUF files: the container llama.cpp, stable-diffusion.cpp and ComfyUI-GGUF use for quantized weights.
//!
//! Layout (version 2 and 3, little-endian): the magic `GGUF`, a version, the tensor and metadata counts; the
//! metadata as typed key–value pairs; a table of tensors (name, dimensions innermost first, ggml type, offset);
//! then, at the file's alignment (`general.alignment`, 32 by default), the tensors' data. The reader is checked
//! against PyPI's `gguf` package (`core/tests/quantized_weights.rs` reads files that package wrote) and treats
//! every file as hostile: each count, length and offset is held to the bytes the file has before anything is
//! allocated for it, so a forged header is an error, never a large allocation or an out-of-bounds read
//! (`core/fuzz/fuzz_targets/gguf.rs` fuzzes it).

use super::ggml::GgmlType;
use crate::error::{Error, Result};
use std::collections::BTreeMap;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's own limit on a tensor's dimensions.
const MAX_DIMS: u32 = 4;
/// Nesting of arrays inside arrays that the reader follows.
const MAX_ARRAY_DEPTH: usize = 4;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    Uint(u64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Uint(u) => Some(*u),
            Value::Int(i) if *i >= 0 => Some(*i as u64),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// One tensor of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// The logical shape, outermost first (GGUF stores it innermost first; this is reversed), or the shape
    /// ComfyUI-GGUF recorded in `comfy.gguf.orig_shape.{name}` for tensors it stored flattened.
    pub shape: Vec<i64>,
    pub ggml: GgmlType,
    /// Where its bytes are in the file, and how many.
    pub start: usize,
    pub len: usize,
}

/// A GGUF file's header, read from its bytes.
#[derive(Clone, Debug)]
pub struct Gguf {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let left = (self.bytes.len() - self.at) as u64;
        if n > left {
            return Err(bad(format!("{what} needs {n} bytes at offset {}, but only {left} are left", self.at)));
        }
        let s = &self.bytes[self.at..self.at + n as usize];
        self.at += n as usize;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(what)?;
        let raw = self.take(n, what)?;
        String::from_utf8(raw.to_vec()).map_err(|_| bad(format!("{what} is not UTF-8")))
    }
    /// A count of items that each take at least `min_item_bytes`, refused when the rest of the file could not
    /// hold that many.
    fn count(&mut self, what: &str, min_item_bytes: u64) -> Result<u64> {
        let n = self.u64(what)?;
        let left = (self.bytes.len() - self.at) as u64;
        if n.checked_mul(min_item_bytes).is_none_or(|need| need > left) {
            return Err(bad(format!("{what} is {n}, more than the {left} bytes left could hold")));
        }
        Ok(n)
    }
    fn value(&mut self, kind: u32, depth: usize) -> Result<Value> {
        Ok(match kind {
            0 => Value::Uint(self.take(1, "a u8")?[0] as u64),
            1 => Value::Int(self.take(1, "an i8")?[0] as i8 as i64),
            2 => Value::Uint(u16::from_le_bytes(self.take(2, "a u16")?.try_into().unwrap()) as u64),
            3 => Value::Int(i16::from_le_bytes(self.take(2, "an i16")?.try_into().unwrap()) as i64),
            4 => Value::Uint(self.u32("a u32")? as u64),
            5 => Value::Int(self.u32("an i32")? as i32 as i64),
            6 => Value::Float(f32::from_bits(self.u32("an f32")?) as f64),
            7 => Value::Bool(self.take(1, "a bool")?[0] != 0),
            8 => Value::Str(self.string("a string value")?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(bad(format!("arrays nest deeper than {MAX_ARRAY_DEPTH}")));
                }
                let item = self.u32("an array's type")?;
                let n = self.count("an array's length", item_min_bytes(item)?)?;
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(item, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::Uint(self.u64("a u64")?),
            11 => Value::Int(self.u64("an i64")? as i64),
            12 => Value::Float(f64::from_bits(self.u64("an f64")?)),
            other => return Err(bad(format!("metadata value type {other} is not a GGUF type"))),
        })
    }
}

/// The fewest bytes a value of GGUF type `kind` takes, to bound an array's length by the file's size.
fn item_min_bytes(kind: u32) -> Result<u64> {
    Ok(match kind {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        other => return Err(bad(format!("array item type {other} is not a GGUF type"))),
    })
}

fn bad(why: String) -> Error {
    Error::invalid(format!("not a valid GGUF file: {why}"))
}

impl Gguf {
    /// Reads the header of the GGUF file whose bytes are `bytes`, and checks that every tensor's data lies
    /// inside them, aligned, without overlapping another's.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(4, "the magic")? != MAGIC {
            return Err(bad("it does not start with the magic \"GGUF\"".into()));
        }
        let version = r.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(bad(format!("version {version}; vgen reads versions 2 and 3")));
        }
        // A tensor's entry takes at least 8 (name length) + 4 (dims) + 4 (type) + 8 (offset) bytes; a metadata
        // pair at least 8 (key length) + 4 (type) + 1 bytes.
        let tensor_count = r.count("the tensor count", 24)?;
        let kv_count = r.count("the metadata count", 13)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = r.string("a metadata key")?;
            let kind = r.u32("a metadata type")?;
            let value = r.value(kind, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(bad(format!("metadata key {key:?} appears twice")));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= 1 << 20 => a,
                _ => return Err(bad(format!("general.alignment {v:?} is not a power of two up to 1 MiB"))),
            },
        };
        let mut raw = Vec::with_capacity(tensor_count as usize);
        let mut names = std::collections::HashSet::new();
        for _ in 0..tensor_count {
            let name = r.string("a tensor name")?;
            let dims_n = r.u32("a tensor's dimension count")?;
            if dims_n == 0 || dims_n > MAX_DIMS {
                return Err(bad(format!("tensor {name:?} has {dims_n} dimensions; GGUF allows 1 to {MAX_DIMS}")));
            }
            let mut dims = Vec::with_capacity(dims_n as usize);
            for _ in 0..dims_n {
                dims.push(r.u64("a tensor dimension")?);
            }
            let ggml = GgmlType::from_id(r.u32("a tensor type")?)
                .map_err(|e| bad(format!("tensor {name:?}: {}", e.message())))?;
            let offset = r.u64("a tensor offset")?;
            if !names.insert(name.clone()) {
                return Err(bad(format!("tensor {name:?} appears twice")));
            }
            raw.push((name, dims, ggml, offset));
        }
        let data_start = (r.at as u64).div_ceil(alignment) * alignment;
        let file_len = bytes.len() as u64;
        let mut tensors = Vec::with_capacity(raw.len());
        for (name, dims, ggml, offset) in raw {
            let elements = dims.iter().try_fold(1u64, |n, d| n.checked_mul(*d)).filter(|n| *n > 0 && *n < 1 << 50);
            let Some(elements) = elements else {
                return Err(bad(format!("tensor {name:?} has dimensions {dims:?}")));
            };
            let block = ggml.block_elements() as u64;
            if dims[0] % block != 0 {
                return Err(bad(format!(
                    "tensor {name:?}: its rows of {} values are not whole {} blocks of {block}",
                    dims[0],
                    ggml.name()
                )));
            }
            let len = elements / block * ggml.block_bytes() as u64;
            if offset % alignment != 0 {
                return Err(bad(format!("tensor {name:?}'s offset {offset} is not a multiple of {alignment}")));
            }
            let start = data_start.checked_add(offset).filter(|s| s.checked_add(len).is_some_and(|e| e <= file_len));
            let Some(start) = start else {
                return Err(bad(format!(
                    "tensor {name:?} ({len} bytes at offset {offset}) runs past the end of the file ({file_len} bytes)"
                )));
            };
            let mut shape: Vec<i64> = dims.iter().rev().map(|d| *d as i64).collect();
            if let Some(orig) = metadata.get(&format!("comfy.gguf.orig_shape.{name}")) {
                let orig: Option<Vec<i64>> = match orig {
                    Value::Array(items) => items.iter().map(|v| v.as_u64().map(|u| u as i64)).collect(),
                    _ => None,
                };
                match orig {
                    Some(o) if o.iter().try_fold(1u64, |n, d| n.checked_mul(*d as u64)) == Some(elements) => shape = o,
                    _ => return Err(bad(format!("comfy.gguf.orig_shape.{name} does not match the tensor's size"))),
                }
            }
            tensors.push(TensorInfo { name, shape, ggml, start: start as usize, len: len as usize });
        }
        let mut spans: Vec<(usize, usize, &str)> =
            tensors.iter().filter(|t| t.len > 0).map(|t| (t.start, t.start + t.len, t.name.as_str())).collect();
        spans.sort();
        if let Some(w) = spans.windows(2).find(|w| w[1].0 < w[0].1) {
            return Err(bad(format!("the data of tensors {:?} and {:?} overlap", w[0].2, w[1].2)));
        }
        Ok(Self { version, metadata, tensors })
    }
}

/// A tensor to write: its name, logical shape (outermost first), type and encoded bytes.
pub struct TensorOut<'a> {
    pub name: &'a str,
    pub shape: &'a [i64],
    pub ggml: GgmlType,
    pub bytes: &'a [u8],
}

/// Writes a version 3 GGUF file with this metadata (strings, integers and arrays of them) and these tensors, at
/// the default alignment.
pub fn write(path: &std::path::Path, metadata: &[(String, Value)], tensors: &[TensorOut<'_>]) -> Result<()> {
    use std::io::Write;
    let mut head = Vec::new();
    head.extend(MAGIC);
    head.extend(3u32.to_le_bytes());
    head.extend((tensors.len() as u64).to_le_bytes());
    head.extend((metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_string(&mut head, k);
        head.extend(value_type(v)?.to_le_bytes());
        put_value(&mut head, v)?;
    }
    let mut offset = 0u64;
    let mut offsets = Vec::with_capacity(tensors.len());
    for t in tensors {
        let elements: i64 = t.shape.iter().product();
        if t.bytes.len() as i64 != elements / t.ggml.block_elements() * t.ggml.block_bytes() {
            return Err(Error::invalid(format!("tensor {:?}: its bytes do not match its shape", t.name)));
        }
        put_string(&mut head, t.name);
        head.extend((t.shape.len() as u32).to_le_bytes());
        for d in t.shape.iter().rev() {
            head.extend((*d as u64).to_le_bytes());
        }
        head.extend((t.ggml as u32).to_le_bytes());
        head.extend(offset.to_le_bytes());
        offsets.push(offset);
        offset = (offset + t.bytes.len() as u64).div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT;
    }
    head.resize((head.len() as u64).div_ceil(DEFAULT_ALIGNMENT) as usize * DEFAULT_ALIGNMENT as usize, 0);
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    file.write_all(&head)?;
    let mut written = 0u64;
    for (t, at) in tensors.iter().zip(offsets) {
        file.write_all(&vec![0u8; (at - written) as usize])?;
        file.write_all(t.bytes)?;
        written = at + t.bytes.len() as u64;
    }
    file.write_all(&vec![0u8; (offset - written) as usize])?;
    file.flush()?;
    Ok(())
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn value_type(v: &Value) -> Result<u32> {
    Ok(match v {
        Value::Uint(_) => 10,
        Value::Int(_) => 11,
        Value::Float(_) => 12,
        Value::Bool(_) => 7,
        Value::Str(_) => 8,
        Value::Array(_) => 9,
    })
}

fn put_value(out: &mut Vec<u8>, v: &Value) -> Result<()> {
    match v {
        Value::Uint(u) => out.extend(u.to_le_bytes()),
        Value::Int(i) => out.extend(i.to_le_bytes()),
        Value::Float(f) => out.extend(f.to_le_bytes()),
        Value::Bool(b) => out.push(*b as u8),
        Value::Str(s) => put_string(out, s),
        Value::Array(items) => {
            let kind = items.first().map(value_type).transpose()?.unwrap_or(11);
            if items.iter().any(|i| value_type(i).ok() != Some(kind)) {
                return Err(Error::invalid("a GGUF array holds values of one type"));
            }
            out.extend(kind.to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item)?;
            }
        }
    }
    Ok(())
}
