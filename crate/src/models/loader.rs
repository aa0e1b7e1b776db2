//! Loading weights by the reference libraries' key names.
//!
//! A [`TensorSource`] is anything that holds named tensors (a safetensors file in memory, a
//! model bundle, made-up weights). A [`Loader`] walks it with a key prefix, like the module path in diffusers
//! (`down_blocks.0.attentions.0...`), records every key it took, and turns a missing or
//! misshaped tensor into an error naming the key. [`Loader::finish`] reports the keys nobody
//! took (unexpected tensors).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::config::TensorSource;
use crate::error::{Error, Result};
use crate::io::safetensors::transpose_2d;
use crate::kernels::ConvKernels;
use crate::quant::HostQuantized;

/// Walks a [`TensorSource`] under a key prefix and records what it took.
#[derive(Clone)]
pub struct Loader<'a> {
    src: &'a dyn TensorSource,
    conv: ConvKernels,
    prefix: String,
    used: Rc<RefCell<BTreeSet<String>>>,
    device: Device,
}

impl<'a> Loader<'a> {
    pub fn new(src: &'a dyn TensorSource, device: &Device) -> Self {
        Self {
            src,
            conv: ConvKernels::default(),
            prefix: String::new(),
            used: Rc::new(RefCell::new(BTreeSet::new())),
            device: device.clone(),
        }
    }

    /// The same loader, its convolution layers computed by `conv` (default:
    /// [`ConvKernels::default`]).
    pub fn with_conv_kernels(mut self, conv: ConvKernels) -> Self {
        self.conv = conv;
        self
    }

    /// How the convolution layers this loader loads are computed.
    pub fn conv_kernels(&self) -> ConvKernels {
        self.conv
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
            conv: self.conv,
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
        self.src.shape(&self.key(name)).is_some()
    }

    /// Whether any key starts with this prefix followed by `name.`.
    pub fn contains_prefix(&self, name: &str) -> bool {
        let p = format!("{}.", self.key(name));
        self.src.names().iter().any(|k| k.starts_with(&p))
    }

    /// Read `name`, whose stored shape must be one of `shapes` (a source that makes weights up
    /// makes them in the first; `matrix`: a linear or convolution weight).
    fn fetch(&self, name: &str, shapes: &[&[usize]], matrix: bool) -> Result<TensorData> {
        let key = self.key(name);
        if let Some(made) = self.src.make(&key, shapes[0], matrix) {
            return Ok(made);
        }
        let Some(stored) = self.src.shape(&key) else {
            return Err(Error::weights(format!("missing tensor `{key}`")));
        };
        if !shapes.iter().any(|s| stored == *s) {
            return Err(Error::weights(format!(
                "tensor `{key}` has shape {stored:?}, expected {:?}",
                shapes[0]
            )));
        }
        let data = self.src.read(&key)?;
        self.used.borrow_mut().insert(key);
        Ok(data)
    }

    /// A tensor of exactly `shape` (quantized data stays quantized for 2-d tensors).
    pub fn tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        let data = self.fetch(name, &[&shape], false)?;
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
        let data = self.fetch(name, &[&shape], false)?;
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
        // Made-up weights too are made as stored (`[d_out, d_in]`) and transposed like loaded
        // ones, so a quantized random source holds the same matrices, quantized.
        let data = self.fetch(name, &[&[d_out, d_in], &[d_out, d_in, 1, 1]], true)?;
        if is_quantized(&data) {
            if crate::kernels::device::is_cpu(&self.device)
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
        let data = self.fetch(name, &[&shape], true)?;
        if is_quantized(&data) {
            if crate::kernels::device::is_cpu(&self.device)
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
        let used = self.used.borrow();
        let mut unexpected: Vec<String> = self
            .src
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
