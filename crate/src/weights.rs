//! Loading weights by the reference libraries' key names.
//!
//! A [`TensorSource`] is anything that holds named tensors (a safetensors file in memory, a
//! model bundle). A [`Loader`] walks it with a key prefix, like the module path in diffusers
//! (`down_blocks.0.attentions.0...`), records every key it took, and turns a missing or
//! misshaped tensor into an error naming the key. [`Loader::finish`] reports the keys nobody
//! took (unexpected tensors).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

use burn::tensor::{DType, Device, Tensor, TensorData};
use half::{bf16, f16};
use safetensors::tensor::{Dtype, Metadata};

use crate::error::{Error, Result};

/// Named tensors, read one at a time.
pub trait TensorSource {
    /// Every tensor name the source holds.
    fn names(&self) -> Vec<String>;
    /// The stored shape of a tensor, or `None` if absent.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// Read one tensor in its stored layout: f32 values, or — for sources that keep weights
    /// quantized — burn quantized data of shape `[shape[0], product of the rest]`.
    fn read(&self, name: &str) -> Result<TensorData>;
}

/// A safetensors file held in memory.
pub struct SafetensorsSource {
    bytes: Vec<u8>,
    data_start: usize,
    metadata: Metadata,
}

impl SafetensorsSource {
    /// Parse the header of a safetensors file; `what` names the file in errors.
    pub fn from_bytes(bytes: Vec<u8>, what: &str) -> Result<Self> {
        let (n, metadata) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| Error::weights(format!("{what}: not a valid safetensors file ({e})")))?;
        // `read_metadata` checks that the offsets cover the buffer exactly.
        Ok(Self {
            bytes,
            data_start: 8 + n,
            metadata,
        })
    }

    /// Read a file from disk (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::Io(format!("cannot read {}: {e}", path.display())))?;
        Self::from_bytes(bytes, &path.display().to_string())
    }

    /// The dtype of a stored tensor.
    pub fn dtype(&self, name: &str) -> Option<Dtype> {
        self.metadata.info(name).map(|i| i.dtype)
    }

    fn raw(&self, name: &str) -> Result<(Dtype, Vec<usize>, &[u8])> {
        let info = self
            .metadata
            .info(name)
            .ok_or_else(|| Error::weights(format!("missing tensor `{name}`")))?;
        let (a, b) = info.data_offsets;
        let data = &self.bytes[self.data_start + a..self.data_start + b];
        Ok((info.dtype, info.shape.clone(), data))
    }

    /// Read any float tensor as f32 values.
    pub fn read_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let (dtype, shape, data) = self.raw(name)?;
        Ok((shape, bytes_to_f32(dtype, data, name)?))
    }

    /// Read an integer tensor (i64 or i32) as i64 values.
    pub fn read_i64(&self, name: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        let (dtype, shape, data) = self.raw(name)?;
        let values = match dtype {
            Dtype::I64 => data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            Dtype::I32 => data
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                .collect(),
            other => {
                return Err(Error::invalid(format!(
                    "tensor `{name}` has dtype {other:?}, expected an integer type (I64 or I32)"
                )));
            }
        };
        Ok((shape, values))
    }
}

/// Convert little-endian float bytes of a safetensors dtype to f32.
pub fn bytes_to_f32(dtype: Dtype, data: &[u8], name: &str) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes(c.try_into().unwrap()).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes(c.try_into().unwrap()).to_f32())
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        other => {
            return Err(Error::weights(format!(
                "tensor `{name}` has dtype {other:?}, expected a float type (F32, F16, BF16, F64)"
            )));
        }
    })
}

/// Transpose a row-major `[rows, cols]` matrix.
pub fn transpose_2d<T: Copy>(values: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(values.len());
    for c in 0..cols {
        for r in 0..rows {
            out.push(values[r * cols + c]);
        }
    }
    out
}

impl TensorSource for SafetensorsSource {
    fn names(&self) -> Vec<String> {
        self.metadata.tensors().into_keys().collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.metadata.info(name).map(|i| i.shape.clone())
    }

    fn read(&self, name: &str) -> Result<TensorData> {
        let (shape, values) = self.read_f32(name)?;
        Ok(TensorData::new(values, shape))
    }
}

/// Walks a [`TensorSource`] under a key prefix and records what it took.
#[derive(Clone)]
pub struct Loader<'a> {
    /// `None`: random weights of whatever shape is asked (benchmarks, memory checks).
    src: Option<&'a dyn TensorSource>,
    /// With `src: None`: store the random weights as the bundle writer would in this mode.
    random_quant: Option<crate::bundle::write::QuantMode>,
    prefix: String,
    used: Rc<RefCell<BTreeSet<String>>>,
    device: Device,
}

impl<'a> Loader<'a> {
    pub fn new(src: &'a dyn TensorSource, device: &Device) -> Self {
        Self {
            src: Some(src),
            random_quant: None,
            prefix: String::new(),
            used: Rc::new(RefCell::new(BTreeSet::new())),
            device: device.clone(),
        }
    }

    /// A loader that makes up weights: uniform in ±1/sqrt(fan_in) for weights, ones for norm
    /// scales, zeros for biases. For benchmarks and memory checks at full size without a
    /// checkpoint; never for generation.
    pub fn random(device: &Device) -> Self {
        Self {
            src: None,
            random_quant: None,
            prefix: String::new(),
            used: Rc::new(RefCell::new(BTreeSet::new())),
            device: device.clone(),
        }
    }

    /// [`Loader::random`] with the weights stored as a bundle of `mode` stores them (blocks of
    /// 32 quantized by the bundle writer's own code; what the bundle keeps in f16 is loaded as
    /// f32, as from a bundle), so the quantized path can be timed and sized at full size without
    /// writing a bundle. `None`: plain f32 weights.
    pub fn random_stored_as(
        device: &Device,
        mode: Option<crate::bundle::write::QuantMode>,
    ) -> Self {
        Self {
            random_quant: mode,
            ..Self::random(device)
        }
    }

    /// Made-up data for `name` stored `[rows, cols]`, quantized when the random mode says so.
    fn random_stored(&self, name: &str, rows: usize, cols: usize) -> Option<TensorData> {
        use crate::bundle::gguf::GgmlType;
        let mode = self.random_quant?;
        let ty = crate::bundle::write::policy(mode, &self.key(name), &[rows, cols]);
        if !matches!(ty, GgmlType::Q8_0 | GgmlType::Q4_0) {
            return None;
        }
        let values = random_data(name, &[rows, cols], cols)
            .try_into_vec::<f32>()
            .ok()?;
        Some(crate::bundle::quantize_data(&values, [rows, cols], ty))
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A loader one level down: `pp("down_blocks").pp(0)` reads `down_blocks.0.*`.
    pub fn pp(&self, name: impl std::fmt::Display) -> Loader<'a> {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        };
        Loader {
            src: self.src,
            random_quant: self.random_quant,
            prefix,
            used: self.used.clone(),
            device: self.device.clone(),
        }
    }

    /// The full key of `name` under this loader's prefix.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    /// Whether the source holds `name` under this prefix.
    pub fn contains(&self, name: &str) -> bool {
        self.src.is_some_and(|s| s.shape(&self.key(name)).is_some())
    }

    /// Whether any key starts with this prefix followed by `name.`.
    pub fn contains_prefix(&self, name: &str) -> bool {
        let p = format!("{}.", self.key(name));
        self.src
            .is_some_and(|s| s.names().iter().any(|k| k.starts_with(&p)))
    }

    /// Read `name`, whose stored shape must be one of `shapes`.
    fn fetch(&self, name: &str, shapes: &[&[usize]]) -> Result<Option<TensorData>> {
        let key = self.key(name);
        let Some(src) = self.src else {
            return Ok(None);
        };
        let Some(stored) = src.shape(&key) else {
            return Err(Error::weights(format!("missing tensor `{key}`")));
        };
        if !shapes.iter().any(|s| stored == *s) {
            return Err(Error::weights(format!(
                "tensor `{key}` has shape {stored:?}, expected {:?}",
                shapes[0]
            )));
        }
        let data = src.read(&key)?;
        self.used.borrow_mut().insert(key);
        Ok(Some(data))
    }

    /// A tensor of exactly `shape` (quantized data stays quantized for 2-d tensors).
    pub fn tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        let data = match self.fetch(name, &[&shape])? {
            Some(d) => d,
            None => {
                return Ok(to_device(
                    random_data(name, &shape, shape[1..].iter().product()),
                    &self.device,
                ));
            }
        };
        if is_quantized(&data) && D != 2 {
            return Err(Error::weights(format!(
                "tensor `{}` is quantized, but this model uses it as a {D}-d tensor; store it as f16 or f32",
                self.key(name)
            )));
        }
        Ok(to_device(data, &self.device))
    }

    /// A lookup table `[rows, dim]` kept on the host ([`EmbeddingTable`]).
    pub fn embedding(&self, name: &str, shape: [usize; 2]) -> Result<EmbeddingTable> {
        let data = match self.fetch(name, &[&shape])? {
            Some(d) => d,
            None => random_data(name, &shape, shape[1]),
        };
        if is_quantized(&data) {
            return HostQuantized::from_data(&data, &self.device)
                .map(EmbeddingTable::Quantized)
                .ok_or_else(|| {
                    Error::weights(format!(
                        "tensor `{}` is quantized in a layout this build does not read",
                        self.key(name)
                    ))
                });
        }
        let values = data
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| Error::weights(format!("tensor `{}`: {e:?}", self.key(name))))?;
        Ok(EmbeddingTable::Float {
            values: values.into(),
            dim: shape[1],
        })
    }

    /// A linear weight stored `[d_out, d_in]` (or conv-shaped `[d_out, d_in, 1, 1]`): float
    /// data is transposed on the host to burn's `[d_in, d_out]`; quantized data stays quantized
    /// as stored.
    pub fn linear_weight(&self, name: &str, d_in: usize, d_out: usize) -> Result<LinearWeight> {
        let fetched = match self.fetch(name, &[&[d_out, d_in], &[d_out, d_in, 1, 1]])? {
            Some(d) => Some(d),
            None => self.random_stored(name, d_out, d_in),
        };
        let data = match fetched {
            Some(d) => d,
            // Made up as stored (`[d_out, d_in]`) and transposed like loaded weights, so a
            // quantized random loader holds the same matrices, quantized.
            None => random_data(name, &[d_out, d_in], d_in),
        };
        if is_quantized(&data) {
            if crate::device::is_cpu(&self.device)
                && let Some(h) = HostQuantized::from_data(&data, &self.device)
            {
                return Ok(LinearWeight::Host(h));
            }
            return Ok(LinearWeight::Quantized(to_device(data, &self.device)));
        }
        let v = data
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| Error::weights(format!("tensor `{}`: {e:?}", self.key(name))))?;
        let data = TensorData::new(transpose_2d(&v, d_out, d_in), [d_in, d_out]);
        Ok(LinearWeight::Float(to_device(data, &self.device)))
    }

    /// A convolution kernel `[c_out, c_in, k, k]`; quantized data stays quantized (as a
    /// `[c_out, c_in·k·k]` matrix) and is dequantized just before each use.
    pub fn conv_weight(&self, name: &str, shape: [usize; 4]) -> Result<ConvWeight> {
        let fan_in: usize = shape[1..].iter().product();
        let fetched = match self.fetch(name, &[&shape])? {
            Some(d) => Some(d),
            None => self.random_stored(name, shape[0], fan_in),
        };
        let data = match fetched {
            Some(d) => d,
            None => {
                return Ok(ConvWeight::Float(to_device(
                    random_data(name, &shape, fan_in),
                    &self.device,
                )));
            }
        };
        if is_quantized(&data) {
            if crate::device::is_cpu(&self.device)
                && let Some(matrix) = HostQuantized::from_data(&data, &self.device)
            {
                return Ok(ConvWeight::Host { matrix, shape });
            }
            return Ok(ConvWeight::Quantized {
                matrix: to_device(data, &self.device),
                shape,
            });
        }
        Ok(ConvWeight::Float(to_device(data, &self.device)))
    }

    /// Error if the source holds keys under `root` that nobody took. Keys ending in one of
    /// `ignore` (known non-parameter buffers such as `position_ids`) are skipped.
    pub fn finish(&self, root: &str, ignore: &[&str]) -> Result<()> {
        let Some(src) = self.src else { return Ok(()) };
        let used = self.used.borrow();
        let mut unexpected: Vec<String> = src
            .names()
            .into_iter()
            .filter(|k| root.is_empty() || k.starts_with(root))
            .filter(|k| !used.contains(k))
            .filter(|k| !ignore.iter().any(|s| k.ends_with(s)))
            .collect();
        if unexpected.is_empty() {
            return Ok(());
        }
        unexpected.sort();
        let n = unexpected.len();
        unexpected.truncate(8);
        Err(Error::weights(format!(
            "{n} unexpected tensor(s): {}{}",
            unexpected
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", "),
            if n > 8 { ", ..." } else { "" }
        )))
    }
}

/// Deterministic made-up values for [`Loader::random`] (a small LCG; speed over quality).
fn random_data(name: &str, shape: &[usize], fan_in: usize) -> TensorData {
    let n: usize = shape.iter().product();
    if shape.len() == 1 {
        let v = if name == "weight" { 1.0 } else { 0.0 };
        return TensorData::new(vec![v; n], shape.to_vec());
    }
    let scale = 1.0 / (fan_in.max(1) as f32).sqrt();
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (n as u64);
    let values = (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    TensorData::new(values, shape.to_vec())
}

fn is_quantized(data: &TensorData) -> bool {
    matches!(data.dtype(), DType::QFloat(_))
}

/// A linear layer's weight as held on the device.
#[derive(Debug, Clone)]
pub enum LinearWeight {
    /// f32 `[d_in, d_out]`.
    Float(Tensor<2>),
    /// Quantized `[d_out, d_in]`, as stored (blocks of 32 along `d_in`).
    Quantized(Tensor<2>),
    /// Quantized `[d_out, d_in]` in host memory (the CPU device), dequantized for each use.
    Host(HostQuantized),
}

/// A convolution kernel as held on the device.
#[derive(Debug, Clone)]
pub enum ConvWeight {
    Float(Tensor<4>),
    /// Quantized `[c_out, c_in·k·k]`, reshaped after dequantization.
    Quantized {
        matrix: Tensor<2>,
        shape: [usize; 4],
    },
    /// Quantized `[c_out, c_in·k·k]` in host memory (the CPU device).
    Host {
        matrix: HostQuantized,
        shape: [usize; 4],
    },
}

impl ConvWeight {
    /// The kernel in f32 for one convolution.
    pub fn get(&self) -> Tensor<4> {
        match self {
            ConvWeight::Float(t) => t.clone(),
            ConvWeight::Quantized { matrix, shape } => matrix.clone().dequantize().reshape(*shape),
            ConvWeight::Host { matrix, shape } => matrix.dequantize().reshape(*shape),
        }
    }

    /// `[c_out, c_in, k, k]`.
    pub fn dims(&self) -> [usize; 4] {
        match self {
            ConvWeight::Float(t) => t.dims(),
            ConvWeight::Quantized { shape, .. } | ConvWeight::Host { shape, .. } => *shape,
        }
    }
}

/// Block-quantized weights kept in host memory for the CPU device and dequantized to f32 right
/// before each use, a whole block of 32 at a time (rows in parallel natively). burn's CPU
/// backend dequantizes value by value, looking up each value's block through its
/// multi-dimensional index, which made quantized SD1.5 UNet steps about 4× slower than f32
/// ones; it also unpacks int4 to a byte per value, where this keeps the bundle's packing.
#[derive(Debug, Clone)]
pub struct HostQuantized {
    /// burn's `PackedU32` layout (see [`crate::bundle::burn_quantized`]): the values packed
    /// little-endian, 4 × 8 or 8 × 4 bits per word, then one f32 scale per block of 32.
    bytes: std::sync::Arc<[u8]>,
    rows: usize,
    cols: usize,
    bits: usize,
    device: Device,
}

/// Values per quantization block.
const BLOCK: usize = 32;

impl HostQuantized {
    /// From burn quantized data `[rows, cols]` in the bundle's scheme (Q8S or Q4F blocks of 32
    /// with f32 scales, packed in u32 words); `None` for anything else.
    pub fn from_data(data: &TensorData, device: &Device) -> Option<Self> {
        use burn::tensor::quantization::{QuantStore, QuantValue, ScaleDtype};
        let DType::QFloat(scheme) = data.dtype() else {
            return None;
        };
        let bits = match scheme.value {
            QuantValue::Q8S => 8,
            QuantValue::Q4F => 4,
            _ => return None,
        };
        let blocks_of_32 = scheme
            .block_size()
            .is_some_and(|b| b.as_slice() == [BLOCK as u8]);
        if !matches!(scheme.store, QuantStore::PackedU32(0))
            || !blocks_of_32
            || scheme.num_levels() != 1
            || scheme.scale_dtype() != ScaleDtype::F32
        {
            return None;
        }
        let shape = data.shape();
        let [rows, cols] = [*shape.first()?, *shape.get(1)?];
        let n = rows * cols;
        if shape.len() != 2 || cols == 0 || cols % BLOCK != 0 {
            return None;
        }
        let bytes = data.as_bytes();
        if bytes.len() != n * bits / 8 + n / BLOCK * 4 {
            return None;
        }
        Some(Self {
            bytes: bytes.into(),
            rows,
            cols,
            bits,
            device: device.clone(),
        })
    }

    /// `[rows, cols]`.
    pub fn dims(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// The packed values and the block scales.
    fn parts(&self) -> (&[u8], &[u8]) {
        self.bytes.split_at(self.rows * self.cols * self.bits / 8)
    }

    /// The f32 values of the given rows, one after the other.
    pub fn dequantize_rows(&self, rows: &[usize]) -> Vec<f32> {
        let (q, s) = self.parts();
        let per_row = self.cols / BLOCK;
        let (qr, sr) = (self.cols * self.bits / 8, per_row * 4); // bytes per row
        let mut out = Vec::with_capacity(rows.len() * self.cols);
        for (o, &r) in out
            .spare_capacity_mut()
            .chunks_exact_mut(self.cols)
            .zip(rows)
        {
            dequantize_blocks(self.bits, &q[r * qr..][..qr], &s[r * sr..][..sr], o);
        }
        // SAFETY: every row of `out` was written above (`rows.len()` rows of `cols` values).
        unsafe { out.set_len(rows.len() * self.cols) };
        out
    }

    /// The f32 values, row-major.
    pub fn dequantize_values(&self) -> Vec<f32> {
        let n = self.rows * self.cols;
        let (q, s) = self.parts();
        let mut out = Vec::with_capacity(n);
        // Runs of 1,024 blocks, in parallel where there are threads.
        const RUN: usize = 1024 * BLOCK;
        let qr = RUN * self.bits / 8;
        crate::cpu_ops::for_chunks(&mut out.spare_capacity_mut()[..n], RUN, |i, o| {
            let blocks = o.len() / BLOCK;
            let (q0, s0) = (i * qr, i * RUN / BLOCK * 4);
            dequantize_blocks(
                self.bits,
                &q[q0..q0 + blocks * BLOCK * self.bits / 8],
                &s[s0..s0 + blocks * 4],
                o,
            );
        });
        // SAFETY: the runs cover all `n` values (n is a multiple of BLOCK: `from_data` checks
        // `cols % BLOCK == 0`), and `blocks` writes every value of its run.
        unsafe { out.set_len(n) };
        out
    }

    /// The f32 matrix `[rows, cols]` on the device.
    pub fn dequantize(&self) -> Tensor<2> {
        Tensor::from_data(
            TensorData::new(self.dequantize_values(), [self.rows, self.cols]),
            &self.device,
        )
    }
}

crate::cpu_ops::simd_fn!(
    /// Dequantize consecutive blocks of `bits` (8 or 4) values: `q` their packed values, `s` their
    /// f32 scales, into `o` (32 values per block; written, never read, so `o` may be
    /// uninitialised).
    fn dequantize_blocks(bits: usize, q: &[u8], s: &[u8], o: &mut [std::mem::MaybeUninit<f32>]) {
        let qb = BLOCK * bits / 8; // bytes per block
        for ((o, q), d) in o
            .chunks_exact_mut(BLOCK)
            .zip(q.chunks_exact(qb))
            .zip(s.chunks_exact(4))
        {
            let d = f32::from_le_bytes([d[0], d[1], d[2], d[3]]);
            if bits == 8 {
                for (o, &v) in o.iter_mut().zip(q) {
                    o.write(v as i8 as f32 * d);
                }
            } else {
                // Two values per byte, the first in the low nibble (4-bit two's complement).
                for (o, &v) in o.chunks_exact_mut(2).zip(q) {
                    o[0].write((((v << 4) as i8) >> 4) as f32 * d);
                    o[1].write(((v as i8) >> 4) as f32 * d);
                }
            }
        }
    }
);

/// A lookup table (CLIP's token embedding) kept in host memory: the rows a call needs are
/// gathered (and dequantized) on the host and only they go to the device. The whole table,
/// 49,408 × 768 values, would be one 145 MiB f32 buffer on the device — above WebGPU's default
/// 128 MiB buffer limit — for a lookup of 154 rows.
#[derive(Debug, Clone)]
pub enum EmbeddingTable {
    Float {
        values: std::sync::Arc<[f32]>,
        dim: usize,
    },
    Quantized(HostQuantized),
}

impl EmbeddingTable {
    /// `[rows, dim]`.
    pub fn dims(&self) -> [usize; 2] {
        match self {
            EmbeddingTable::Float { values, dim } => [values.len() / dim, *dim],
            EmbeddingTable::Quantized(q) => q.dims(),
        }
    }

    /// The rows `ids` (each below `dims()[0]`), one after the other.
    pub fn rows(&self, ids: &[usize]) -> Vec<f32> {
        match self {
            EmbeddingTable::Float { values, dim } => ids
                .iter()
                .flat_map(|&i| values[i * dim..(i + 1) * dim].iter().copied())
                .collect(),
            EmbeddingTable::Quantized(q) => q.dequantize_rows(ids),
        }
    }
}

/// Upload host data to a device, keeping quantized data quantized.
pub fn to_device<const D: usize>(data: TensorData, device: &Device) -> Tensor<D> {
    match data.dtype() {
        DType::QFloat(_) => Tensor::from_data(data, device),
        _ => Tensor::from_data(data.convert::<f32>(), device),
    }
}
