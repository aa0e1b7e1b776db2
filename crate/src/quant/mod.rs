//! Quantization in one place: the stored types ([`GgmlType`]: f32, f16 and GGUF's block formats
//! Q8_0 / Q4_0, [`blocks`]), which tensors a [`QuantMode`] stores how ([`policy`]), burn's
//! quantized layout for them ([`quant_scheme`], [`burn_quantized`]), and quantized weights kept
//! in host memory for the CPU device ([`HostQuantized`]).

pub mod blocks;
mod host;

use burn::tensor::TensorData;
use burn::tensor::quantization::{QuantScheme, QuantStore, QuantValue, ScaleDtype};
use half::f16;

use crate::error::{Error, Result};

pub use blocks::BLOCK;
pub use host::HostQuantized;

/// ggml tensor types this crate reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q8_0,
}

impl GgmlType {
    pub fn code(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q8_0 => 8,
        }
    }

    pub fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            8 => GgmlType::Q8_0,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "f32",
            GgmlType::F16 => "f16",
            GgmlType::Q4_0 => "q4_0",
            GgmlType::Q8_0 => "q8_0",
        }
    }

    /// Whether values are stored in blocks of 32 (Q4_0, Q8_0).
    pub fn is_block(self) -> bool {
        matches!(self, GgmlType::Q4_0 | GgmlType::Q8_0)
    }

    /// Bytes for `n` elements (`None` if `n` is not a whole number of blocks).
    pub fn byte_size(self, n: u64) -> Option<u64> {
        match self {
            GgmlType::F32 => n.checked_mul(4),
            GgmlType::F16 => n.checked_mul(2),
            GgmlType::Q4_0 => n.is_multiple_of(32).then(|| n / 32 * 18),
            GgmlType::Q8_0 => n.is_multiple_of(32).then(|| n / 32 * 34),
        }
    }
}

/// How weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantMode {
    /// Everything f16.
    F16,
    /// Matrices and convolution kernels Q8_0; the rest f16.
    Int8,
    /// Matrices and convolution kernels Q4_0 (embedding tables Q8_0); the rest f16.
    Int4,
    /// Transformer matrices (attention, feed-forward, CLIP layers) Q4_0; convolutions,
    /// embeddings and the VAE Q8_0; the rest f16.
    Mixed,
}

impl std::str::FromStr for QuantMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "f16" => QuantMode::F16,
            "int8" => QuantMode::Int8,
            "int4" => QuantMode::Int4,
            "mixed" => QuantMode::Mixed,
            other => {
                return Err(Error::invalid(format!(
                    "unknown quantization `{other}` (expected f16, int8, int4 or mixed)"
                )));
            }
        })
    }
}

impl QuantMode {
    pub fn name(self) -> &'static str {
        match self {
            QuantMode::F16 => "f16",
            QuantMode::Int8 => "int8",
            QuantMode::Int4 => "int4",
            QuantMode::Mixed => "mixed",
        }
    }
}

/// Tensors kept in f16 whatever the mode: the first and last convolutions of each network and
/// the patch embedding (few parameters, large effect), positional/class embeddings.
fn keep_f16(name: &str) -> bool {
    const KEEP: &[&str] = &[
        "conv_in.",
        "conv_out.",
        "quant_conv.",
        "post_quant_conv.",
        "patch_embedding.",
        "position_embedding.",
        "class_embedding",
    ];
    // The tiny autoencoder (2.4 M parameters at SD1.5 size) is not worth its accuracy.
    KEEP.iter().any(|k| name.contains(k)) || name.starts_with("tiny_vae.")
}

/// The stored type of one tensor under a mode.
pub fn policy(mode: QuantMode, name: &str, shape: &[usize]) -> GgmlType {
    let cols: usize = shape.iter().skip(1).product();
    let blockable = shape.len() >= 2 && cols.is_multiple_of(blocks::BLOCK) && cols > 0;
    if mode == QuantMode::F16 || !blockable || keep_f16(name) {
        return GgmlType::F16;
    }
    match mode {
        QuantMode::F16 => GgmlType::F16,
        QuantMode::Int8 => GgmlType::Q8_0,
        // Embedding tables are looked up row by row, where 4-bit blocks cost the most accuracy.
        QuantMode::Int4 if name.ends_with("embedding.weight") => GgmlType::Q8_0,
        QuantMode::Int4 => GgmlType::Q4_0,
        QuantMode::Mixed => {
            let transformer_matrix = shape.len() == 2
                && !name.starts_with("vae.")
                && !name.contains("embedding")
                && (name.contains("attn")
                    || name.contains(".ff.")
                    || name.contains("mlp")
                    || name.contains("proj"));
            if transformer_matrix {
                GgmlType::Q4_0
            } else {
                GgmlType::Q8_0
            }
        }
    }
}

/// Encode f32 values as a stored type.
pub fn encode(ty: GgmlType, values: &[f32]) -> Vec<u8> {
    match ty {
        GgmlType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => values
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect(),
        GgmlType::Q8_0 => blocks::quantize_q8_0(values),
        GgmlType::Q4_0 => blocks::quantize_q4_0(values),
    }
}

/// burn's scheme for a GGUF block type: blocks of 32 along the last dimension, f32 scales on
/// the device (f16 scales would need WGSL's `shader-f16`, which many adapters lack).
pub fn quant_scheme(ty: GgmlType) -> Option<QuantScheme> {
    let value = match ty {
        GgmlType::Q8_0 => QuantValue::Q8S,
        GgmlType::Q4_0 => QuantValue::Q4F,
        _ => return None,
    };
    Some(
        QuantScheme::default()
            .with_value(value)
            .with_store(QuantStore::PackedU32(0))
            .per_block([32], ScaleDtype::F32),
    )
}

/// burn's quantized layout for `PackedU32` storage: the values packed into little-endian u32
/// words (4 × 8 bits or 8 × 4 bits, two's complement, first value in the lowest bits), then the
/// block scales as f32. (burn's own `TensorData::quantized` does not pack sub-byte values.)
pub fn burn_quantized(q: &[i8], scales: &[f32], shape: [usize; 2], ty: GgmlType) -> TensorData {
    let scheme = quant_scheme(ty).expect("block type");
    let bits = if ty == GgmlType::Q4_0 { 4 } else { 8 };
    let per_word = 32 / bits;
    let mask = (1u32 << bits) - 1;
    let mut bytes = Vec::with_capacity(q.len() * bits / 8 + scales.len() * 4);
    for word in q.chunks(per_word) {
        let w = word
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &v)| acc | ((v as u32) & mask) << (i * bits));
        bytes.extend_from_slice(&w.to_le_bytes());
    }
    for s in scales {
        bytes.extend_from_slice(&s.to_le_bytes());
    }
    TensorData::from_bytes_vec(bytes, shape, burn::tensor::DType::QFloat(scheme))
}

/// f32 values `[rows, cols]` quantized to a block type exactly as the bundle writer stores them,
/// as burn quantized data (random-weight benchmarks of the quantized path).
pub fn quantize_data(values: &[f32], shape: [usize; 2], ty: GgmlType) -> TensorData {
    let (q, d) = unpack_blocks(&encode(ty, values), ty);
    burn_quantized(&q, &d, shape, ty)
}

/// A block type's stored bytes as values and per-block scales.
pub fn unpack_blocks(bytes: &[u8], ty: GgmlType) -> (Vec<i8>, Vec<f32>) {
    if ty == GgmlType::Q8_0 {
        blocks::unpack_q8_0(bytes)
    } else {
        blocks::unpack_q4_0(bytes)
    }
}
