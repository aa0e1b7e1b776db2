//! Block quantization on the host, in GGUF's (ggml's) block formats:
//!
//! - `Q8_0`: 32 values per block, one f16 scale `d = max|x| / 127`, values `round(x / d)` as i8;
//!   `x ≈ q · d`. 34 bytes per block.
//! - `Q4_0`: 32 values per block, one f16 scale `d = max_signed / -8` (the value of largest
//!   magnitude maps to -8), values `q = round(x / d) + 8` clamped to 0..=15, two per byte (the
//!   block's first 16 values in the low nibbles, the last 16 in the high nibbles); `x ≈ (q - 8) · d`.
//!   18 bytes per block.
//!
//! Blocks run over the tensor's elements in row-major order.

use half::f16;

pub const BLOCK: usize = 32;
pub const Q8_0_BYTES: usize = 2 + BLOCK;
pub const Q4_0_BYTES: usize = 2 + BLOCK / 2;

/// Quantize `x` (a multiple of 32 values) to Q8_0 blocks.
pub fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / BLOCK * Q8_0_BYTES);
    for b in x.chunks(BLOCK) {
        let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let dh = f16::from_f32(d);
        let inv = if dh.to_f32() != 0.0 {
            1.0 / dh.to_f32()
        } else {
            0.0
        };
        out.extend_from_slice(&dh.to_le_bytes());
        out.extend(
            b.iter()
                .map(|v| (v * inv).round().clamp(-127.0, 127.0) as i8 as u8),
        );
    }
    out
}

/// Quantize `x` (a multiple of 32 values) to Q4_0 blocks.
pub fn quantize_q4_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / BLOCK * Q4_0_BYTES);
    for b in x.chunks(BLOCK) {
        let max = b
            .iter()
            .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let d = max / -8.0;
        let dh = f16::from_f32(d);
        let inv = if dh.to_f32() != 0.0 {
            1.0 / dh.to_f32()
        } else {
            0.0
        };
        out.extend_from_slice(&dh.to_le_bytes());
        let q = |v: f32| ((v * inv).round() + 8.0).clamp(0.0, 15.0) as u8;
        for j in 0..BLOCK / 2 {
            out.push(q(b[j]) | (q(b[j + BLOCK / 2]) << 4));
        }
    }
    out
}

/// Q8_0 blocks -> (i8 values, f32 scales per block).
pub fn unpack_q8_0(bytes: &[u8]) -> (Vec<i8>, Vec<f32>) {
    let n = bytes.len() / Q8_0_BYTES;
    let mut q = Vec::with_capacity(n * BLOCK);
    let mut d = Vec::with_capacity(n);
    for b in bytes.chunks_exact(Q8_0_BYTES) {
        d.push(f16::from_le_bytes([b[0], b[1]]).to_f32());
        q.extend(b[2..].iter().map(|&v| v as i8));
    }
    (q, d)
}

/// Q4_0 blocks -> (signed values -8..=7, f32 scales per block).
pub fn unpack_q4_0(bytes: &[u8]) -> (Vec<i8>, Vec<f32>) {
    let n = bytes.len() / Q4_0_BYTES;
    let mut q = vec![0i8; n * BLOCK];
    let mut d = Vec::with_capacity(n);
    for (i, b) in bytes.chunks_exact(Q4_0_BYTES).enumerate() {
        d.push(f16::from_le_bytes([b[0], b[1]]).to_f32());
        for j in 0..BLOCK / 2 {
            q[i * BLOCK + j] = (b[2 + j] & 0x0F) as i8 - 8;
            q[i * BLOCK + j + BLOCK / 2] = (b[2 + j] >> 4) as i8 - 8;
        }
    }
    (q, d)
}

/// Dequantize unpacked blocks.
pub fn dequantize(q: &[i8], d: &[f32]) -> Vec<f32> {
    q.iter()
        .enumerate()
        .map(|(i, &v)| v as f32 * d[i / BLOCK])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 % 1013) as f32 / 506.0 - 1.0) * (1.0 + (i % 5) as f32))
            .collect()
    }

    fn rel_err(a: &[f32], b: &[f32]) -> f32 {
        let num: f32 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
        let den: f32 = b.iter().map(|y| y * y).sum();
        (num / den).sqrt()
    }

    #[test]
    fn q8_round_trip() {
        let x = data(32 * 40);
        let bytes = quantize_q8_0(&x);
        assert_eq!(bytes.len(), 40 * Q8_0_BYTES);
        let (q, d) = unpack_q8_0(&bytes);
        let e = rel_err(&dequantize(&q, &d), &x);
        assert!(e < 6e-3, "{e}");
    }

    #[test]
    fn q4_round_trip() {
        let x = data(32 * 40);
        let bytes = quantize_q4_0(&x);
        assert_eq!(bytes.len(), 40 * Q4_0_BYTES);
        let (q, d) = unpack_q4_0(&bytes);
        assert!(q.iter().all(|&v| (-8..=7).contains(&v)));
        let e = rel_err(&dequantize(&q, &d), &x);
        assert!(e < 0.12, "{e}");
    }

    #[test]
    fn zero_block() {
        let (q, d) = unpack_q8_0(&quantize_q8_0(&[0.0; 32]));
        assert!(dequantize(&q, &d).iter().all(|&v| v == 0.0));
        let (q, d) = unpack_q4_0(&quantize_q4_0(&[0.0; 32]));
        assert!(dequantize(&q, &d).iter().all(|&v| v == 0.0));
    }
}
