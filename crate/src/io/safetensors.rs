//! safetensors files: the reference libraries' weight files and the `forward` command's inputs
//! and outputs.

use ::safetensors::tensor::{Dtype, Metadata};
use burn::tensor::TensorData;
use half::{bf16, f16};

use crate::config::TensorSource;
use crate::error::{Error, Result};

/// A safetensors file held in memory.
pub struct SafetensorsSource {
    bytes: Vec<u8>,
    data_start: usize,
    metadata: Metadata,
}

impl SafetensorsSource {
    /// Parse the header of a safetensors file; `what` names the file in errors.
    pub fn from_bytes(bytes: Vec<u8>, what: &str) -> Result<Self> {
        let (n, metadata) = ::safetensors::SafeTensors::read_metadata(&bytes)
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
