//! The model bundle: one self-describing, streamable file per model, in the GGUF container
//! (docs/bundle-format.md).
//!
//! The header holds the format version, every component's config, the tokenizer vocabulary,
//! the marker, the scheduler config, the model card, the licence and a checksum (xxh3-64) per
//! fixed-size chunk of the data section. Tensors are named `<component>.<reference key>`, stored
//! in the reference layout, each aligned to 256 bytes, as f32, f16, Q8_0 or Q4_0.

pub mod gguf;
pub mod write;

use burn::tensor::TensorData;
use half::f16;

use self::gguf::{GgmlType, Header, TensorInfo};
use crate::config::TensorSource;
use crate::config::{ModelConfig, ModelWeights, Part};
use crate::error::{Error, Result};
use crate::quant::{burn_quantized, unpack_blocks};

/// This crate's bundle format version (`fastcomposer.format_version`). Version 2 stores
/// block-quantized tensors of more than two dimensions as ggml does (innermost dimension a
/// whole number of blocks: `[out, in·k·k]`), their reference shapes in
/// `fastcomposer.tensor_shapes`; version 1 (shapes as they are) is still read.
pub const FORMAT_VERSION: u32 = 2;
/// Oldest format version this build reads.
pub const MIN_FORMAT_VERSION: u32 = 1;
/// Tensor data alignment (WebGPU's `minStorageBufferOffsetAlignment`).
pub const ALIGNMENT: u64 = 256;
/// Default checksum chunk.
pub const CHUNK_SIZE: u64 = 4 << 20;

pub mod keys {
    pub const ARCHITECTURE: &str = "general.architecture";
    pub const ALIGNMENT: &str = "general.alignment";
    pub const NAME: &str = "general.name";
    pub const LICENSE: &str = "general.license";
    pub const DESCRIPTION: &str = "general.description";
    pub const FORMAT_VERSION: &str = "fastcomposer.format_version";
    pub const CONFIG: &str = "fastcomposer.config";
    pub const QUANTIZATION: &str = "fastcomposer.quantization";
    pub const TOKENIZER_BPE: &str = "fastcomposer.tokenizer.bpe_gz";
    pub const CHUNK_SIZE: &str = "fastcomposer.chunk_size";
    pub const CHUNK_HASHES: &str = "fastcomposer.chunk_xxh3";
    pub const TENSOR_SHAPES: &str = "fastcomposer.tensor_shapes";
}

/// How a tensor of reference shape `shape` and stored type `ty` is laid out in the file: as
/// it is, or, for block-quantized tensors of more than two dimensions, as `[out, rest]` so that
/// the innermost dimension is a whole number of blocks (what ggml requires). The bytes are the
/// same either way (row-major).
pub fn stored_shape(shape: &[usize], ty: gguf::GgmlType) -> Vec<usize> {
    if ty.is_block() && shape.len() > 2 {
        vec![shape[0], shape[1..].iter().product()]
    } else {
        shape.to_vec()
    }
}

/// The checksum of one chunk.
pub fn chunk_hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// What the header says, checked: enough to plan downloads and verify chunks.
#[derive(Debug, Clone)]
pub struct BundleInfo {
    pub header: Header,
    pub config: ModelConfig,
    pub name: String,
    pub license: String,
    pub description: String,
    pub quantization: String,
    pub chunk_size: u64,
    pub chunk_hashes: Vec<u64>,
    /// The tokenizer vocabulary (gzip of `bpe_simple_vocab_16e6.txt`).
    pub tokenizer_bpe_gz: Vec<u8>,
}

impl BundleInfo {
    /// Parse and check a header from the first bytes of a bundle.
    pub fn parse(prefix: &[u8]) -> Result<Self> {
        let header = gguf::parse_header(prefix)?;
        let m = &header.metadata;
        let get_str = |k: &str| m.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let need_str = |k: &str| {
            get_str(k).ok_or_else(|| Error::weights(format!("bundle header: missing `{k}`")))
        };
        if get_str(keys::ARCHITECTURE).as_deref() != Some("fastcomposer") {
            return Err(Error::weights(
                "not a fastcomposer bundle (general.architecture is not \"fastcomposer\")",
            ));
        }
        let version = match m.get(keys::FORMAT_VERSION).and_then(|v| v.as_u64()) {
            Some(v) if (MIN_FORMAT_VERSION as u64..=FORMAT_VERSION as u64).contains(&v) => v,
            Some(v) => {
                return Err(Error::weights(format!(
                    "bundle format version {v} is not supported by this build (it reads versions {MIN_FORMAT_VERSION} to {FORMAT_VERSION})"
                )));
            }
            None => {
                return Err(Error::weights(format!(
                    "bundle header: missing `{}`",
                    keys::FORMAT_VERSION
                )));
            }
        };
        let shapes_json = get_str(keys::TENSOR_SHAPES);
        let config: ModelConfig = serde_json::from_str(&need_str(keys::CONFIG)?)
            .map_err(|e| Error::weights(format!("bundle header: bad model config ({e})")))?;
        let chunk_size = m
            .get(keys::CHUNK_SIZE)
            .and_then(|v| v.as_u64())
            .filter(|&c| c >= 4096 && c % ALIGNMENT == 0)
            .ok_or_else(|| {
                Error::weights(format!(
                    "bundle header: missing or bad `{}`",
                    keys::CHUNK_SIZE
                ))
            })?;
        let chunk_hashes = match m.get(keys::CHUNK_HASHES) {
            Some(gguf::Value::Array(v)) => v
                .iter()
                .map(|x| match x {
                    gguf::Value::U64(h) => Ok(*h),
                    _ => Err(Error::weights("bundle header: chunk checksums must be u64")),
                })
                .collect::<Result<Vec<_>>>()?,
            _ => {
                return Err(Error::weights(format!(
                    "bundle header: missing `{}`",
                    keys::CHUNK_HASHES
                )));
            }
        };
        let n_chunks = header.data_len.div_ceil(chunk_size) as usize;
        if chunk_hashes.len() != n_chunks {
            return Err(Error::weights(format!(
                "bundle header: {} chunk checksums for {n_chunks} chunks",
                chunk_hashes.len()
            )));
        }
        let tokenizer_bpe_gz = match m.get(keys::TOKENIZER_BPE) {
            Some(gguf::Value::Bytes(b)) => b.clone(),
            _ => {
                return Err(Error::weights(format!(
                    "bundle header: missing `{}`",
                    keys::TOKENIZER_BPE
                )));
            }
        };
        let (name, license, description, quantization) = (
            get_str(keys::NAME).unwrap_or_default(),
            get_str(keys::LICENSE).unwrap_or_default(),
            get_str(keys::DESCRIPTION).unwrap_or_default(),
            get_str(keys::QUANTIZATION).unwrap_or_default(),
        );
        let mut header = header;
        if version >= 2 {
            // As ggml: a block-quantized tensor's innermost dimension is whole blocks.
            if let Some(t) = header.tensors.iter().find(|t| {
                t.ty.is_block() && t.shape.last().is_none_or(|&d| d % crate::quant::BLOCK != 0)
            }) {
                return Err(Error::weights(format!(
                    "bundle header: tensor `{}` is {} with shape {:?}: its innermost dimension is not a whole number of blocks",
                    t.name,
                    t.ty.name(),
                    t.shape
                )));
            }
        }
        if let Some(json) = shapes_json {
            let shapes: std::collections::BTreeMap<String, Vec<usize>> =
                serde_json::from_str(&json).map_err(|e| {
                    Error::weights(format!(
                        "bundle header: bad `{}` ({e})",
                        keys::TENSOR_SHAPES
                    ))
                })?;
            for (name, shape) in shapes {
                let t = header
                    .tensors
                    .iter_mut()
                    .find(|t| t.name == name)
                    .ok_or_else(|| {
                        Error::weights(format!(
                            "bundle header: `{}` names `{name}`, which is not in the bundle",
                            keys::TENSOR_SHAPES
                        ))
                    })?;
                let n = |s: &[usize]| s.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
                if shape.is_empty()
                    || n(&shape) != n(&t.shape)
                    || stored_shape(&shape, t.ty) != t.shape
                {
                    return Err(Error::weights(format!(
                        "bundle header: tensor `{name}` is stored as {:?}, which does not hold shape {shape:?}",
                        t.shape
                    )));
                }
                t.shape = shape;
            }
        }
        Ok(Self {
            config,
            name,
            license,
            description,
            quantization,
            chunk_size,
            chunk_hashes,
            tokenizer_bpe_gz,
            header,
        })
    }

    /// Total file size the header implies.
    pub fn file_len(&self) -> u64 {
        self.header.data_start + self.header.data_len
    }

    pub fn n_chunks(&self) -> usize {
        self.chunk_hashes.len()
    }

    /// File byte range of chunk `i`.
    pub fn chunk_range(&self, i: usize) -> (u64, u64) {
        let start = self.header.data_start + i as u64 * self.chunk_size;
        let end = (start + self.chunk_size).min(self.file_len());
        (start, end)
    }

    /// Check chunk `i`'s bytes against its checksum.
    pub fn verify_chunk(&self, i: usize, bytes: &[u8]) -> Result<()> {
        let (a, b) = self.chunk_range(i);
        if bytes.len() as u64 != b - a {
            return Err(Error::weights(format!(
                "bundle chunk {i} has {} bytes, expected {}",
                bytes.len(),
                b - a
            )));
        }
        if chunk_hash(bytes) != self.chunk_hashes[i] {
            return Err(Error::weights(format!(
                "bundle chunk {i} (bytes {a}..{b}) is corrupt: checksum mismatch"
            )));
        }
        Ok(())
    }

    /// Tensor names that belong to a component.
    pub fn part_tensors(&self, part: Part) -> impl Iterator<Item = &TensorInfo> {
        let p = format!("{}.", part.name());
        self.header
            .tensors
            .iter()
            .filter(move |t| t.name.starts_with(&p))
    }
}

/// A bundle assembled from consecutive pieces of its file, as they arrive from a download or a
/// file read as a stream: the header is parsed as soon as it is complete, the whole file's
/// memory is then reserved once, and each chunk is verified as soon as its last byte is in, so
/// a damaged bundle fails at its first bad chunk and no second copy of the file is ever made.
#[derive(Default)]
pub struct BundleStream {
    bytes: Vec<u8>,
    info: Option<BundleInfo>,
    verified: usize,
    received: u64,
    /// Length at the last header parse that ran out of bytes: the next attempt waits until the
    /// prefix has doubled, so a long header is parsed a logarithmic number of times.
    tried: usize,
}

impl BundleStream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Append the next piece of the file. Fails on a header that is not a bundle's and on a
    /// chunk whose checksum does not match; bytes past the end the header gives are ignored.
    pub fn push(&mut self, piece: &[u8]) -> Result<()> {
        self.received += piece.len() as u64;
        match &self.info {
            Some(info) => {
                let room = info.file_len() as usize - self.bytes.len();
                self.bytes
                    .extend_from_slice(&piece[..piece.len().min(room)]);
            }
            None => {
                self.bytes.extend_from_slice(piece);
                self.parse_header(false)?;
            }
        }
        self.verify_arrived()
    }

    /// The stream has ended: fails unless every byte the header gives has arrived (and so every
    /// chunk is verified); the error says what is missing or wrong.
    pub fn end(&mut self) -> Result<()> {
        if self.info.is_none() {
            if self.bytes.is_empty() {
                return Err(Error::weights("the bundle is empty"));
            }
            // The header never parsed: the parse error says where it ends.
            self.parse_header(true)?;
            self.verify_arrived()?;
        }
        let info = self.info.as_ref().expect("parsed above");
        if (self.bytes.len() as u64) < info.file_len() {
            return Err(Error::weights(format!(
                "the bundle is truncated: {} bytes, the header needs {}",
                self.bytes.len(),
                info.file_len()
            )));
        }
        Ok(())
    }

    /// Bytes received so far (including any past the end of the bundle).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The header, once it is complete.
    pub fn info(&self) -> Option<&BundleInfo> {
        self.info.as_ref()
    }

    /// The bundle, once the stream has ended (see [`end`](Self::end)).
    pub fn finish(mut self) -> Result<Bundle> {
        self.end()?;
        let info = self.info.expect("parsed by end");
        Bundle::assemble(info, self.bytes)
    }

    /// Parse the header from the bytes so far, unless it was tried at less than half this
    /// length (`force`: try anyway, and a truncated header is an error). Once parsed, the
    /// whole file's memory is reserved.
    fn parse_header(&mut self, force: bool) -> Result<()> {
        if !force && self.bytes.len() < (2 * self.tried).max(1) {
            return Ok(());
        }
        match BundleInfo::parse(&self.bytes) {
            Ok(info) => {
                let len = usize::try_from(info.file_len()).map_err(|_| {
                    Error::weights("the bundle is too large for this machine's memory")
                })?;
                self.bytes.truncate(len);
                self.bytes
                    .try_reserve_exact(len - self.bytes.len())
                    .map_err(|_| {
                        Error::weights(format!("not enough memory for the bundle ({len} bytes)"))
                    })?;
                self.info = Some(info);
                Ok(())
            }
            Err(e) if !force && gguf::is_truncated(&e) => {
                self.tried = self.bytes.len();
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Verify every chunk whose bytes have all arrived and was not verified yet.
    fn verify_arrived(&mut self) -> Result<()> {
        let Some(info) = &self.info else {
            return Ok(());
        };
        while self.verified < info.n_chunks() {
            let (a, b) = info.chunk_range(self.verified);
            if b as usize > self.bytes.len() {
                break;
            }
            info.verify_chunk(self.verified, &self.bytes[a as usize..b as usize])?;
            self.verified += 1;
        }
        Ok(())
    }
}

/// A whole bundle in memory, every chunk verified.
pub struct Bundle {
    pub info: BundleInfo,
    bytes: Vec<u8>,
    index: std::collections::HashMap<String, usize>,
}

impl Bundle {
    /// Parse and verify a complete bundle file.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        let info = BundleInfo::parse(&bytes)?;
        if (bytes.len() as u64) < info.file_len() {
            return Err(Error::weights(format!(
                "the bundle is truncated: {} bytes, the header needs {}",
                bytes.len(),
                info.file_len()
            )));
        }
        for i in 0..info.n_chunks() {
            let (a, b) = info.chunk_range(i);
            info.verify_chunk(i, &bytes[a as usize..b as usize])?;
        }
        Self::assemble(info, bytes)
    }

    /// From a parsed header and the file's bytes, every chunk already verified.
    fn assemble(info: BundleInfo, bytes: Vec<u8>) -> Result<Self> {
        for part in Part::ALL {
            if info.part_tensors(part).next().is_none() {
                return Err(Error::weights(format!(
                    "the bundle has no `{}` component",
                    part.name()
                )));
            }
        }
        let index = info
            .header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(Self { info, bytes, index })
    }

    /// Read a bundle file from disk (native).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: &std::path::Path) -> Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::Io(format!("cannot read {}: {e}", path.display())))?;
        Self::from_bytes(bytes).map_err(|e| match e {
            Error::Weights(m) => Error::Weights(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.info.config
    }

    /// The bundle file's bytes (as far as the header gives; verified).
    pub fn file_bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        let a = (self.info.header.data_start + t.offset) as usize;
        &self.bytes[a..a + t.size as usize]
    }
}

/// One stored tensor as host data: f32 values, or burn quantized data `[rows, cols]`.
pub fn tensor_data(t: &TensorInfo, bytes: &[u8]) -> Result<TensorData> {
    let shape = t.shape.clone();
    Ok(match t.ty {
        GgmlType::F32 => TensorData::new(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect::<Vec<f32>>(),
            shape,
        ),
        GgmlType::F16 => TensorData::new(
            bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect::<Vec<f32>>(),
            shape,
        ),
        GgmlType::Q8_0 | GgmlType::Q4_0 => {
            let rows = shape[0];
            let cols: usize = shape[1..].iter().product();
            if shape.len() < 2 || !cols.is_multiple_of(crate::quant::BLOCK) {
                return Err(Error::weights(format!(
                    "tensor `{}` is {} but its rows ({cols} values) are not whole blocks of 32",
                    t.name,
                    t.ty.name()
                )));
            }
            let (q, d) = unpack_blocks(bytes, t.ty);
            if d.iter().any(|s| !s.is_finite()) {
                return Err(Error::weights(format!(
                    "tensor `{}` has non-finite scales",
                    t.name
                )));
            }
            burn_quantized(&q, &d, [rows, cols], t.ty)
        }
    })
}

impl TensorSource for Bundle {
    fn names(&self) -> Vec<String> {
        self.info
            .header
            .tensors
            .iter()
            .map(|t| t.name.clone())
            .collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.index
            .get(name)
            .map(|&i| self.info.header.tensors[i].shape.clone())
    }

    fn read(&self, name: &str) -> Result<TensorData> {
        let t = self
            .index
            .get(name)
            .map(|&i| &self.info.header.tensors[i])
            .ok_or_else(|| Error::weights(format!("missing tensor `{name}`")))?;
        tensor_data(t, self.tensor_bytes(t))
    }
}

impl ModelWeights for Bundle {
    fn part(&self, part: Part) -> Result<(&dyn TensorSource, String)> {
        Ok((self as &dyn TensorSource, format!("{}.", part.name())))
    }
}
