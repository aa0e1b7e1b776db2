//! *How* 2-D convolutions are computed. The model files say *what* they compute
//! ([`Conv2d`](crate::models::nn::Conv2d), the VAE's banded layers) and call [`conv2d`]; this file picks
//! the kernel per device:
//! - the CPU device: 3×3 stride-1 convolutions by Winograd's form on the host
//!   ([`crate::winograd`]), the rest by burn's im2col + gemm;
//! - GPU devices: 3×3 stride-1 convolutions as matrix products — the input's 9 shifted windows
//!   stacked into `[c_in·9, n·rows·w]` columns, times the kernel as a `[c_out, c_in·9]` matrix —
//!   in bands of output rows whose columns stay within [`COLUMNS_BYTES`] (burn 0.22's only dense
//!   3×3 kernel on WGSL devices is a direct convolution, much slower than its matmul on a GPU:
//!   BENCHMARKS.md);
//! - everything else: burn's `conv2d`, which is also the reference both paths are tested against.

use burn::tensor::module::conv2d as burn_conv2d;
use burn::tensor::ops::{ConvOptions, PadMode};
use burn::tensor::{DType, Tensor};

/// Largest stacked-windows buffer of one band on a GPU device.
pub const COLUMNS_BYTES: usize = 32 << 20;

/// Which kernel GPU devices use for 3×3 stride-1 convolutions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GpuConv {
    /// Stacked windows times the kernel matrix, in bands (the default).
    #[default]
    Matmul,
    /// burn's direct convolution.
    Direct,
}

/// How 3×3 stride-1 convolutions are computed: on the CPU device ([`WinogradPolicy`]) and on
/// GPU devices ([`GpuConv`]). The CLI's `FASTCOMPOSER_WINOGRAD` and `FASTCOMPOSER_GPU_CONV` set
/// them for A/B benchmarks.
///
/// [`WinogradPolicy`]: super::WinogradPolicy
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConvKernels {
    pub cpu: super::WinogradPolicy,
    pub gpu: GpuConv,
}

/// `burn::tensor::module::conv2d`, computed by the kernel this device does best.
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
    kernels: ConvKernels,
) -> Tensor<4> {
    if crate::kernels::device::is_cpu(&x.device()) {
        return crate::kernels::winograd::conv2d(x, weight, bias, options, kernels.cpu);
    }
    let [c_out, c_in, kh, kw] = weight.dims();
    if matmul_applies(&x, [c_out, c_in, kh, kw], &options, kernels.gpu) {
        let matrix = weight.reshape([c_out, c_in * kh * kw]);
        windows_matmul(x, matrix, [kh, kw], bias, &options, COLUMNS_BYTES)
    } else {
        burn_conv2d(x, weight, bias, options)
    }
}

/// Whether [`windows_matmul`] computes this convolution on this (GPU) device: 3×3, stride 1,
/// undilated, ungrouped, and `gpu` is [`GpuConv::Matmul`].
pub fn matmul_applies(
    x: &Tensor<4>,
    weight_dims: [usize; 4],
    options: &ConvOptions<2>,
    gpu: GpuConv,
) -> bool {
    gpu == GpuConv::Matmul
        && !crate::kernels::device::is_cpu(&x.device())
        && weight_dims[1] == x.dims()[1]
        && super::winograd::is_3x3_stride_1(weight_dims, options)
}

/// A k×k stride-1 convolution as matrix products: per band of output rows, the input's k²
/// shifted windows for every image stacked (`[c_in·k², n·rows·w_out]`, at most `budget` bytes
/// unless one row is larger) and multiplied by the kernel as a `[c_out, c_in·k²]` matrix — f32,
/// or block-quantized as a bundle stores it (burn's quantized matmul then reads the blocks; no
/// f32 copy of the kernel is made). The `(c_in, i, j)` order of both matches PyTorch's weight
/// layout. The windows are a strided view of the padded input (`unfold`, no copy) that one
/// reshape lays out as the columns: a band costs a copy of its input rows (none when one band
/// covers the output), that reshape and the matrix product, whatever the batch.
pub fn windows_matmul(
    x: Tensor<4>,
    matrix: Tensor<2>,
    kernel: [usize; 2],
    bias: Option<Tensor<1>>,
    options: &ConvOptions<2>,
    budget: usize,
) -> Tensor<4> {
    let [n, c_in, h, w] = x.dims();
    let [c_out, k] = matrix.dims();
    let [kh, kw] = kernel;
    assert_eq!(k, c_in * kh * kw, "kernel matrix columns");
    let [(pt, pb), (pl, pr)] = options.padding;
    let ho = (h + pt + pb + 1).saturating_sub(kh);
    let wo = (w + pl + pr + 1).saturating_sub(kw);
    if n * c_out * ho * wo == 0 || k == 0 {
        return Tensor::zeros([n, c_out, ho, wo], &x.device());
    }
    let matrix = match matrix.dtype() {
        DType::QFloat(_) => matrix,
        d if d == x.dtype() => matrix,
        _ => matrix.cast(x.dtype()),
    };
    let xp = x.pad([(pt, pb), (pl, pr)], PadMode::Constant(0.0));
    let elem = xp.dtype().size();
    let rows = (budget / (k * n * wo * elem).max(1)).clamp(1, ho);
    let mut bands = Vec::with_capacity(ho.div_ceil(rows));
    for r0 in (0..ho).step_by(rows) {
        let r = rows.min(ho - r0);
        // The input rows this band's windows read: [n, c_in, r + kh - 1, w_padded].
        let input = if r == ho {
            xp.clone()
        } else {
            let wp = xp.dims()[3];
            xp.clone()
                .slice([0..n, 0..c_in, r0..r0 + r + kh - 1, 0..wp])
        };
        // [n, c_in, r, wo, kh, kw] (a view) -> [c_in, kh, kw, n, r, wo] -> [k, n·r·wo] (one copy).
        let columns = input
            .unfold::<5, _>(2, kh, 1)
            .unfold::<6, _>(3, kw, 1)
            .permute([1, 4, 5, 0, 2, 3])
            .reshape([k, n * r * wo]);
        bands.push(matrix.clone().matmul(columns).reshape([c_out, n, r, wo]));
    }
    // [c_out, n, ho, wo] -> [n, c_out, ho, wo].
    let y = Tensor::cat(bands, 2).swap_dims(0, 1);
    match bias {
        Some(b) => {
            let b = if b.dtype() == y.dtype() {
                b
            } else {
                b.cast(y.dtype())
            };
            y + b.reshape([1, c_out, 1, 1])
        }
        None => y,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Pcg32;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn windows_matmul_matches_burns_convolution_in_bands() {
        let device = Device::flex();
        let mut rng = Pcg32::new(5);
        for (n, c_in, c_out, h, w, pad, budget) in [
            (2, 7, 5, 9, 11, [(1, 1), (1, 1)], 1 << 20),
            // One row per band (a budget below one row's columns), asymmetric padding.
            (1, 6, 4, 7, 5, [(0, 1), (0, 1)], 1),
            // Bands of 3 rows (of both images' columns: c_in·9 × n·w_out f32 each) over 8
            // output rows: 3 + 3 + 2.
            (2, 4, 3, 8, 6, [(1, 1), (1, 1)], 4 * 9 * 2 * 6 * 4 * 3),
            // One row per band with two images.
            (2, 5, 3, 6, 7, [(1, 1), (1, 1)], 1),
            (1, 3, 2, 5, 5, [(0, 0), (0, 0)], 1 << 20),
        ] {
            let x = Tensor::<4>::from_data(
                TensorData::new(rng.normals(n * c_in * h * w), [n, c_in, h, w]),
                &device,
            );
            let wt = Tensor::<4>::from_data(
                TensorData::new(rng.normals(c_out * c_in * 9), [c_out, c_in, 3, 3]),
                &device,
            );
            let b = Tensor::<1>::from_data(TensorData::new(rng.normals(c_out), [c_out]), &device);
            let options = ConvOptions::new_with_padding([1, 1], pad, [1, 1], 1);
            let reference = burn_conv2d(x.clone(), wt.clone(), Some(b.clone()), options.clone());
            let matrix = wt.reshape([c_out, c_in * 9]);
            let ours = windows_matmul(x, matrix, [3, 3], Some(b), &options, budget);
            assert_eq!(ours.dims(), reference.dims());
            let diff = (ours - reference)
                .abs()
                .max()
                .into_data()
                .try_into_vec::<f32>()
                .unwrap()[0];
            assert!(
                diff <= 1e-4,
                "n {n} c {c_in}->{c_out} {h}x{w} {pad:?}: {diff}"
            );
        }
    }
}
