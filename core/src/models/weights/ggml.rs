//! ggml's tensor encodings (the block formats GGUF files store) and their conversion to and from floats, done
//! with libtorch operations on whatever device the blocks live on.
//!
//! A quantized tensor is a run of fixed-size blocks along its innermost dimension, each holding `block_elements`
//! values in `block_bytes` bytes. Dequantization follows the `gguf` package's reference (`gguf/quants.py`,
//! version 0.19.0) operation for operation in fp32, so its results match that reference to the bit (checked by
//! `core/tests/quantized_weights.rs` against fixtures the package made). Quantization exists for the formats
//! `vgen quantize` writes: Q8_0 and Q4_1 exactly as the reference does them, Q4_K (which the reference cannot
//! write) with a min/max fit of its own.

use crate::error::{Error, Result};
use tch::{Kind, Tensor};

/// The ggml encodings vgen reads. The discriminants are ggml's own type numbers, as GGUF files store them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q8_0 = 8,
    Q4K = 12,
    Q5K = 13,
    Q6K = 14,
    BF16 = 30,
}

/// The super-block of the k-quants: 256 values.
const QK_K: i64 = 256;

impl GgmlType {
    pub const ALL: [GgmlType; 9] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ];

    /// The type with ggml's number `id`; an error names the type when it is one vgen does not read.
    pub fn from_id(id: u32) -> Result<Self> {
        if let Some(t) = Self::ALL.iter().find(|t| **t as u32 == id) {
            return Ok(*t);
        }
        let known = match id {
            6 => "Q5_0",
            7 => "Q5_1",
            9 => "Q8_1",
            10 => "Q2_K",
            11 => "Q3_K",
            15 => "Q8_K",
            16..=23 | 29 => "an IQ type",
            24 => "I8",
            25 => "I16",
            26 => "I32",
            27 => "I64",
            28 => "F64",
            34 | 35 => "a TQ type",
            _ => "an unknown type",
        };
        Err(Error::invalid(format!(
            "ggml type {id} ({known}) is not one vgen reads; it reads {}",
            Self::ALL.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
        )))
    }

    /// The name ggml and the `gguf` package use.
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
        }
    }

    /// The number of values one block holds.
    pub fn block_elements(self) -> i64 {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => 32,
            GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => QK_K,
        }
    }

    /// The number of bytes one block takes.
    pub fn block_bytes(self) -> i64 {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q8_0 => 34,
            GgmlType::Q4K => 144,
            GgmlType::Q5K => 176,
            GgmlType::Q6K => 210,
        }
    }

    /// Whether the type packs values into blocks with scales (everything but the plain floats).
    pub fn is_quantized(self) -> bool {
        self.block_elements() > 1
    }

    /// The bytes a row of `row` values takes, or an error when the row is not a whole number of blocks.
    pub fn row_bytes(self, row: i64) -> Result<i64> {
        if row < 1 || row % self.block_elements() != 0 {
            return Err(Error::invalid(format!(
                "a row of {row} values is not a whole number of {} blocks ({} values each)",
                self.name(),
                self.block_elements()
            )));
        }
        Ok(row / self.block_elements() * self.block_bytes())
    }

    /// The values of `bytes` (any shape whose last dimension is a whole number of blocks, kind `Uint8`, on any
    /// device) as an fp32 tensor of `shape`.
    pub fn dequantize(self, bytes: &Tensor, shape: &[i64]) -> Result<Tensor> {
        let total: i64 = shape.iter().product();
        let blocks_n = total / self.block_elements();
        if total % self.block_elements() != 0 || bytes.numel() as i64 != blocks_n * self.block_bytes() {
            return Err(Error::invalid(format!(
                "{} bytes do not hold a {} tensor of shape {shape:?}",
                bytes.numel(),
                self.name()
            )));
        }
        let b = bytes.reshape([blocks_n, self.block_bytes()]);
        let values = match self {
            GgmlType::F32 => b.view_dtype(Kind::Float),
            GgmlType::F16 => b.view_dtype(Kind::Half).to_kind(Kind::Float),
            GgmlType::BF16 => b.view_dtype(Kind::BFloat16).to_kind(Kind::Float),
            GgmlType::Q8_0 => {
                let d = half_at(&b, 0);
                b.narrow(1, 2, 32).contiguous().view_dtype(Kind::Int8).to_kind(Kind::Float) * d
            }
            GgmlType::Q4_0 => {
                let d = half_at(&b, 0);
                let q = nibbles(&b.narrow(1, 2, 16)).to_kind(Kind::Int8) - 8;
                d * q.to_kind(Kind::Float)
            }
            GgmlType::Q4_1 => {
                let (d, m) = (half_at(&b, 0), half_at(&b, 2));
                d * nibbles(&b.narrow(1, 4, 16)).to_kind(Kind::Float) + m
            }
            GgmlType::Q4K | GgmlType::Q5K => {
                let (d, dmin) = (half_at(&b, 0), half_at(&b, 2));
                let (sc, m) = scale_min_k4(&b.narrow(1, 4, 12));
                let d = (d * sc.to_kind(Kind::Float)).reshape([blocks_n, 8, 1]);
                let dm = (dmin * m.to_kind(Kind::Float)).reshape([blocks_n, 8, 1]);
                let q = if self == GgmlType::Q4K {
                    split_nibbles_32(&b.narrow(1, 16, 128), blocks_n)
                } else {
                    let low = split_nibbles_32(&b.narrow(1, 48, 128), blocks_n);
                    let high = shifted(&b.narrow(1, 16, 32).reshape([blocks_n, 1, 1, 32]), &[0, 1, 2, 3, 4, 5, 6, 7])
                        .bitwise_and(1)
                        .reshape([blocks_n, 8, 32]);
                    low.bitwise_or_tensor(&high.bitwise_left_shift_tensor_scalar(4))
                };
                (d * q.to_kind(Kind::Float) - dm).reshape([blocks_n, QK_K])
            }
            GgmlType::Q6K => {
                let scales = b.narrow(1, 192, 16).contiguous().view_dtype(Kind::Int8).to_kind(Kind::Float);
                let d = (half_at(&b, 208) * scales).reshape([blocks_n, 16, 1]);
                let low = shifted(&b.narrow(1, 0, 128).reshape([blocks_n, 2, 1, 64]), &[0, 4])
                    .bitwise_and(0x0F)
                    .reshape([blocks_n, 8, 32]);
                let high = shifted(&b.narrow(1, 128, 64).reshape([blocks_n, 2, 1, 32]), &[0, 2, 4, 6])
                    .bitwise_and(0x03)
                    .reshape([blocks_n, 8, 32]);
                let q = low.bitwise_or_tensor(&high.bitwise_left_shift_tensor_scalar(4)).to_kind(Kind::Int8) - 32;
                (d * q.reshape([blocks_n, 16, 16]).to_kind(Kind::Float)).reshape([blocks_n, QK_K])
            }
        };
        Ok(values.reshape(shape))
    }

    /// `values` (fp32, its last dimension a whole number of blocks) encoded as this type: a `Uint8` tensor with
    /// the same leading dimensions and the encoded row as its last.
    pub fn quantize(self, values: &Tensor) -> Result<Tensor> {
        let shape = values.size();
        let row = *shape.last().unwrap_or(&1);
        let row_bytes = self.row_bytes(row)?;
        let x = values.to_kind(Kind::Float).reshape([-1, self.block_elements()]);
        let blocks = match self {
            GgmlType::F32 => x.view_dtype(Kind::Uint8),
            GgmlType::F16 => x.to_kind(Kind::Half).view_dtype(Kind::Uint8),
            GgmlType::BF16 => x.to_kind(Kind::BFloat16).view_dtype(Kind::Uint8),
            GgmlType::Q8_0 => {
                // As gguf's Q8_0.quantize_blocks, which is bit-exact with ggml's reference.
                let d = x.abs().amax([1], true) / 127.0;
                let id = d.reciprocal().where_scalarother(&d.ne(0.0), 0.0);
                let qs = round_half_away(&(&x * id)).to_kind(Kind::Int8).view_dtype(Kind::Uint8);
                Tensor::cat(&[d.to_kind(Kind::Half).view_dtype(Kind::Uint8), qs], 1)
            }
            GgmlType::Q4_1 => {
                // As gguf's Q4_1.quantize_blocks.
                let (max, min) = (x.amax([1], true), x.amin([1], true));
                let d = (&max - &min) / 15.0;
                let id = d.reciprocal().where_scalarother(&d.ne(0.0), 0.0);
                let q = ((&x - &min) * id + 0.5).trunc().clamp(0.0, 15.0).to_kind(Kind::Uint8).reshape([-1, 2, 16]);
                let qs = q.select(1, 0).bitwise_or_tensor(&q.select(1, 1).bitwise_left_shift_tensor_scalar(4));
                let half = |t: &Tensor| t.to_kind(Kind::Half).view_dtype(Kind::Uint8);
                Tensor::cat(&[half(&d), half(&min), qs], 1)
            }
            GgmlType::Q4K => quantize_q4_k(&x),
            other => {
                return Err(Error::invalid(format!(
                    "vgen writes F32, F16, BF16, Q4_1, Q8_0 and Q4_K; not {}",
                    other.name()
                )));
            }
        };
        let mut out_shape = shape;
        *out_shape.last_mut().unwrap() = row_bytes;
        if out_shape.is_empty() {
            out_shape.push(row_bytes);
        }
        Ok(blocks.reshape(out_shape))
    }
}

/// The fp16 at byte `at` of every block, as fp32 `[n, 1]`.
fn half_at(blocks: &Tensor, at: i64) -> Tensor {
    blocks.narrow(1, at, 2).contiguous().view_dtype(Kind::Half).to_kind(Kind::Float)
}

/// `bytes` `[.., k]` shifted right by each of `shifts` along a new axis before the last: `[.., len(shifts), k]`
/// where the input had a size-1 axis there.
fn shifted(bytes: &Tensor, shifts: &[i64]) -> Tensor {
    let s = Tensor::from_slice(shifts).to_kind(Kind::Uint8).to_device(bytes.device());
    let mut shape = vec![1i64; bytes.dim()];
    shape[bytes.dim() - 2] = shifts.len() as i64;
    bytes.bitwise_right_shift(&s.reshape(shape))
}

/// 16 bytes per block to 32 4-bit values: the low nibbles first, then the high ones (Q4_0, Q4_1).
fn nibbles(bytes: &Tensor) -> Tensor {
    let n = bytes.size()[0];
    shifted(&bytes.reshape([n, 1, 1, 16]), &[0, 4]).bitwise_and(0x0F).reshape([n, 32])
}

/// 128 bytes per block to 8 groups of 32 4-bit values: each run of 32 bytes gives its low nibbles, then its high
/// ones (Q4_K, Q5_K).
fn split_nibbles_32(bytes: &Tensor, n: i64) -> Tensor {
    shifted(&bytes.reshape([n, 4, 1, 32]), &[0, 4]).bitwise_and(0x0F).reshape([n, 8, 32])
}

/// The eight 6-bit scales and mins packed into 12 bytes by Q4_K and Q5_K (gguf's `Q4_K.get_scale_min`).
fn scale_min_k4(scales: &Tensor) -> (Tensor, Tensor) {
    let n = scales.size()[0];
    let s = scales.reshape([n, 3, 4]);
    let (d, m, md) = (s.select(1, 0), s.select(1, 1), s.select(1, 2));
    let sc = Tensor::cat(
        &[
            d.bitwise_and(0x3F),
            md.bitwise_and(0x0F).bitwise_or_tensor(&d.bitwise_right_shift_tensor_scalar(2).bitwise_and(0x30)),
        ],
        1,
    );
    let min = Tensor::cat(
        &[
            m.bitwise_and(0x3F),
            md.bitwise_right_shift_tensor_scalar(4)
                .bitwise_or_tensor(&m.bitwise_right_shift_tensor_scalar(2).bitwise_and(0x30)),
        ],
        1,
    );
    (sc, min)
}

/// Rounds half away from zero, as gguf's `np_roundf` (and C's `roundf`) do.
fn round_half_away(x: &Tensor) -> Tensor {
    let a = x.abs();
    let floored = a.floor();
    let b = &floored + ((&a - &floored) * 2.0).floor();
    x.sign() * b
}

/// Q4_K blocks `[n, 144]` for `x` `[n, 256]`: per group of 32 values a 4-bit code between the group's min (at
/// most 0) and max, the groups' scales and mins in 6 bits against the block's fp16 `d` and `dmin`.
fn quantize_q4_k(x: &Tensor) -> Tensor {
    let n = x.size()[0];
    let g = x.reshape([n, 8, 32]);
    let lo = g.amin([2], false).clamp_max(0.0);
    let hi = g.amax([2], false);
    let scale = (&hi - &lo) / 15.0;
    let min = -lo;
    let d = (scale.amax([1], true) / 63.0).to_kind(Kind::Half);
    let dmin = (min.amax([1], true) / 63.0).to_kind(Kind::Half);
    let (df, dminf) = (d.to_kind(Kind::Float), dmin.to_kind(Kind::Float));
    let code6 = |v: &Tensor, unit: &Tensor| {
        (v / unit).where_scalarother(&unit.ne(0.0), 0.0).round().clamp(0.0, 63.0).to_kind(Kind::Uint8)
    };
    let (sc, m) = (code6(&scale, &df), code6(&min, &dminf));
    let step = (&df * sc.to_kind(Kind::Float)).unsqueeze(2);
    let offset = (&dminf * m.to_kind(Kind::Float)).unsqueeze(2);
    let q = ((g + offset) / &step).where_scalarother(&step.ne(0.0), 0.0).round().clamp(0.0, 15.0).to_kind(Kind::Uint8);
    // Packing is the inverse of `scale_min_k4` and `split_nibbles_32`.
    let (sc_lo, sc_hi) = (sc.narrow(1, 0, 4), sc.narrow(1, 4, 4));
    let (m_lo, m_hi) = (m.narrow(1, 0, 4), m.narrow(1, 4, 4));
    let packed = Tensor::cat(
        &[
            sc_lo.bitwise_or_tensor(&sc_hi.bitwise_right_shift_tensor_scalar(4).bitwise_left_shift_tensor_scalar(6)),
            m_lo.bitwise_or_tensor(&m_hi.bitwise_right_shift_tensor_scalar(4).bitwise_left_shift_tensor_scalar(6)),
            sc_hi.bitwise_and(0x0F).bitwise_or_tensor(&m_hi.bitwise_and(0x0F).bitwise_left_shift_tensor_scalar(4)),
        ],
        1,
    );
    let q = q.reshape([n, 4, 2, 32]);
    let qs = q.select(2, 0).bitwise_or_tensor(&q.select(2, 1).bitwise_left_shift_tensor_scalar(4)).reshape([n, 128]);
    Tensor::cat(&[d.view_dtype(Kind::Uint8), dmin.view_dtype(Kind::Uint8), packed, qs], 1)
}
