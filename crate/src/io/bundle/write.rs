//! Writing a bundle (native): a plan of tensors with their stored types, then the data written
//! tensor by tensor from a streaming source — peak memory is about one tensor, not the model.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use super::gguf::{GgmlType, HeaderWriter};
use super::{ALIGNMENT, CHUNK_SIZE, FORMAT_VERSION, chunk_hash, keys, stored_shape};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::quant::{QuantMode, encode};

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
