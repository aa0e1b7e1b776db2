//! How the models' operations are computed, below the models: the device and its precision
//! ([`device`]), attention ([`attention`], with CubeCL's flash kernel by name in [`flash`]),
//! convolutions ([`conv`]: Winograd's form on the CPU in [`winograd`], matrix products over
//! stacked windows on GPUs) and the CPU device's fused element-wise host kernels ([`cpu_ops`]).
//! Which kernel runs is chosen by the [`KernelOptions`] given at load; nothing here reads the
//! environment.

pub mod attention;
pub mod conv;
pub mod cpu_ops;
pub mod device;
#[cfg(feature = "webgpu")]
pub mod flash;
pub mod winograd;

pub use attention::AttentionKernel;
pub use conv::{ConvKernels, GpuConv};
pub use winograd::{Policy as WinogradPolicy, Tile as WinogradTile};

/// Every kernel choice, given explicitly at load (the CLI and the tests read theirs from flags
/// and environment variables; the library reads none): how attention is computed and within
/// which buffer budget (the VAE's row bands share it), and how 3×3 convolutions are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KernelOptions {
    pub attention: AttentionKernel,
    pub conv: ConvKernels,
}

impl From<AttentionKernel> for KernelOptions {
    fn from(attention: AttentionKernel) -> Self {
        Self {
            attention,
            ..Self::default()
        }
    }
}

/// `t` laid out row-major. CubeCL's flash kernels (cubek-attention 0.3.1) pick their vector
/// widths from the shapes alone, as if every input were row-major, but index with the real
/// strides: an input whose head dimension is not contiguous is read wrong. Ours are views: the
/// heads split off by a transpose, and the quantized linear layer's output is itself a
/// transpose (`(W·xᵀ)ᵀ`, the head dimension strided by the number of rows), which gave the
/// default model's CFG batch wrong text embeddings and UNet outputs (up to 6.0 of 3.3).
/// Reshaping to rank 2 copies a tensor that is not contiguous (burn cannot express that
/// reshape as a view) and is free for one that is.
#[cfg(any(not(target_arch = "wasm32"), feature = "webgpu"))]
pub(crate) fn row_major(t: burn::tensor::Tensor<4>) -> burn::tensor::Tensor<4> {
    let [b, h, l, d] = t.dims();
    t.reshape([b * h * l, d]).reshape([b, h, l, d])
}

/// Runs `f` over `chunk`-sized pieces of `xs` with their index: in parallel natively and in the
/// threaded wasm build (rayon over Web Workers), one after the other in the plain wasm build.
/// The crate's one parallel loop; the other helpers are built on it.
pub(crate) fn for_chunks<T: Send>(
    xs: &mut [T],
    chunk: usize,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    #[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
    {
        use rayon::prelude::*;
        xs.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    }
    #[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
    xs.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
}

/// Runs `f(i)` for `i` in `0..count` ([`for_chunks`] over nothing: `()` takes no memory).
pub(crate) fn for_each_index(count: usize, f: impl Fn(usize) + Sync + Send) {
    for_chunks(&mut vec![(); count], 1, |i, _| f(i));
}
