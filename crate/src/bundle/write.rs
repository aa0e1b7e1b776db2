//! Writing a bundle (native): a plan of tensors with their stored types, then the data written
//! tensor by tensor from a streaming source — peak memory is about one tensor, not the model.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use half::f16;

use super::gguf::{GgmlType, HeaderWriter};
use super::{ALIGNMENT, CHUNK_SIZE, FORMAT_VERSION, chunk_hash, keys, quant, stored_shape};
use crate::error::{Error, Result};
use crate::pipeline::ModelConfig;

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
    KEEP.iter().any(|k| name.contains(k))
}

/// The stored type of one tensor under a mode.
pub fn policy(mode: QuantMode, name: &str, shape: &[usize]) -> GgmlType {
    let cols: usize = shape.iter().skip(1).product();
    let blockable = shape.len() >= 2 && cols.is_multiple_of(quant::BLOCK) && cols > 0;
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
        GgmlType::Q8_0 => quant::quantize_q8_0(values),
        GgmlType::Q4_0 => quant::quantize_q4_0(values),
    }
}

/// Everything in a bundle besides the tensors.
pub struct BundleMeta {
    pub name: String,
    pub license: String,
    pub description: String,
    pub config: ModelConfig,
    pub tokenizer_bpe_gz: Vec<u8>,
}

/// One tensor to write: its bundle name, shape, and how to get its f32 values.
pub struct PlannedTensor<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub ty: GgmlType,
    pub read: Box<dyn Fn() -> Result<Vec<f32>> + 'a>,
}

/// Write a bundle to `path`. Tensors are read one at a time; checksums are filled in after the
/// data is written.
pub fn write_bundle(
    path: &Path,
    meta: &BundleMeta,
    mode: QuantMode,
    tensors: Vec<PlannedTensor>,
) -> Result<u64> {
    let io = |e: std::io::Error| Error::Io(format!("cannot write {}: {e}", path.display()));
    // 1. offsets
    let mut offsets = Vec::with_capacity(tensors.len());
    let mut end = 0u64;
    for t in &tensors {
        let n: u64 = t.shape.iter().map(|&d| d as u64).product();
        let size = t.ty.byte_size(n).ok_or_else(|| {
            Error::invalid(format!(
                "tensor `{}` cannot be stored as {}",
                t.name,
                t.ty.name()
            ))
        })?;
        offsets.push((end, size));
        end = (end + size).div_ceil(ALIGNMENT) * ALIGNMENT;
    }
    let data_len = offsets.last().map_or(0, |&(o, s)| o + s);
    let n_chunks = data_len.div_ceil(CHUNK_SIZE) as usize;
    // 2. header, with placeholder checksums
    let config = serde_json::to_string(&meta.config).map_err(|e| Error::invalid(e.to_string()))?;
    // Reference shapes of the tensors stored flattened (see `stored_shape`).
    let reshaped: std::collections::BTreeMap<&str, &[usize]> = tensors
        .iter()
        .filter(|t| stored_shape(&t.shape, t.ty) != t.shape)
        .map(|t| (t.name.as_str(), t.shape.as_slice()))
        .collect();
    let shapes = serde_json::to_string(&reshaped).map_err(|e| Error::invalid(e.to_string()))?;
    let mut h = HeaderWriter::new(tensors.len() as u64, 12);
    h.kv_string(keys::ARCHITECTURE, "fastcomposer");
    h.kv_u32(keys::ALIGNMENT, ALIGNMENT as u32);
    h.kv_string(keys::NAME, &meta.name);
    h.kv_string(keys::LICENSE, &meta.license);
    h.kv_string(keys::DESCRIPTION, &meta.description);
    h.kv_u32(keys::FORMAT_VERSION, FORMAT_VERSION);
    h.kv_string(keys::CONFIG, &config);
    h.kv_string(keys::QUANTIZATION, mode.name());
    h.kv_bytes(keys::TOKENIZER_BPE, &meta.tokenizer_bpe_gz);
    h.kv_u64(keys::CHUNK_SIZE, CHUNK_SIZE);
    h.kv_string(keys::TENSOR_SHAPES, &shapes);
    let hashes_at = h.kv_u64_array(keys::CHUNK_HASHES, &vec![0; n_chunks]);
    for (t, &(off, _)) in tensors.iter().zip(&offsets) {
        h.tensor(&t.name, &stored_shape(&t.shape, t.ty), t.ty, off);
    }
    let header = h.finish(ALIGNMENT);
    let mut f = std::fs::File::create(path).map_err(io)?;
    f.write_all(&header).map_err(io)?;
    // 3. data, hashed chunk by chunk as it streams out
    let mut hasher = ChunkHasher::new(n_chunks);
    let mut written = 0u64;
    for (t, &(off, size)) in tensors.iter().zip(&offsets) {
        let pad = off - written;
        let zeros = vec![0u8; pad as usize];
        f.write_all(&zeros).map_err(io)?;
        hasher.update(&zeros);
        let values = (t.read)()?;
        let n: usize = t.shape.iter().product();
        if values.len() != n {
            return Err(Error::weights(format!(
                "tensor `{}`: {} values for shape {:?}",
                t.name,
                values.len(),
                t.shape
            )));
        }
        let bytes = encode(t.ty, &values);
        debug_assert_eq!(bytes.len() as u64, size);
        f.write_all(&bytes).map_err(io)?;
        hasher.update(&bytes);
        written = off + size;
    }
    let hashes = hasher.finish();
    // 4. patch the checksums into the header
    f.seek(SeekFrom::Start(hashes_at as u64)).map_err(io)?;
    let raw: Vec<u8> = hashes.iter().flat_map(|h| h.to_le_bytes()).collect();
    f.write_all(&raw).map_err(io)?;
    f.flush().map_err(io)?;
    Ok(header.len() as u64 + data_len)
}

/// xxh3 of consecutive `CHUNK_SIZE` pieces of a byte stream.
struct ChunkHasher {
    buf: Vec<u8>,
    hashes: Vec<u64>,
}

impl ChunkHasher {
    fn new(n: usize) -> Self {
        Self {
            buf: Vec::with_capacity(CHUNK_SIZE as usize),
            hashes: Vec::with_capacity(n),
        }
    }

    fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let take = (CHUNK_SIZE as usize - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buf.len() == CHUNK_SIZE as usize {
                self.hashes.push(chunk_hash(&self.buf));
                self.buf.clear();
            }
        }
    }

    fn finish(mut self) -> Vec<u64> {
        if !self.buf.is_empty() {
            self.hashes.push(chunk_hash(&self.buf));
        }
        self.hashes
    }
}
