//! Quantized weights in host memory for the CPU device.

use burn::tensor::{DType, Device, Tensor, TensorData};

use super::BLOCK;

/// Block-quantized weights kept in host memory for the CPU device and dequantized to f32 right
/// before each use, a whole block of 32 at a time (rows in parallel natively). burn's CPU
/// backend dequantizes value by value, looking up each value's block through its
/// multi-dimensional index, which made quantized SD1.5 UNet steps about 4× slower than f32
/// ones; it also unpacks int4 to a byte per value, where this keeps the bundle's packing.
#[derive(Debug, Clone)]
pub struct HostQuantized {
    /// burn's `PackedU32` layout (see [`crate::quant::burn_quantized`]): the values packed
    /// little-endian, 4 × 8 or 8 × 4 bits per word, then one f32 scale per block of 32.
    bytes: std::sync::Arc<[u8]>,
    rows: usize,
    cols: usize,
    bits: usize,
    device: Device,
}

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

    /// The f32 values (row-major) and block type of burn quantized data in the bundle's
    /// scheme; `None` for anything else.
    pub fn values_of(data: &TensorData) -> Option<(Vec<f32>, super::GgmlType)> {
        let h = Self::from_data(data, &Device::default())?;
        let ty = if h.bits == 4 {
            super::GgmlType::Q4_0
        } else {
            super::GgmlType::Q8_0
        };
        Some((h.dequantize_values(), ty))
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
        crate::kernels::for_chunks(&mut out.spare_capacity_mut()[..n], RUN, |i, o| {
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

crate::kernels::cpu_ops::simd_fn!(
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
