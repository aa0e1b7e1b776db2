//! CubeCL's "unit" flash-attention kernel (one query row per invocation, f32 accumulation, no
//! scores buffer), called directly through a burn backend extension.
//!
//! Natively burn's fused attention operation autotunes among CubeCL's flash kernels. The wasm
//! build has no autotuning, and there burn's operation runs its fallback, which holds every
//! head's scores matrix at once (1 GiB for SD1.5's self-attention at 512×512). So in the browser
//! [`crate::kernels::attention::AttentionKernel::Fused`] asks for the unit kernel by name, here.

use burn::backend::wgpu::CubeBackend;
use burn::backend::{Backend, Dispatch, backend_extension, tensor::FloatTensor};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Shape, Tensor};

/// The output of attention over `query` `[B, H, Lq, d]` and `value` `[B, H, Lk, dv]`.
fn output_shape(query: &Shape, value: &Shape) -> Shape {
    let mut out = query.clone();
    out[3] = value[3];
    out
}

#[backend_extension(Cube, Fusion)]
pub trait FlashAttention: Backend {
    /// `softmax(q kᵀ / √d) v` by CubeCL's unit flash kernel (burn's default scale).
    #[fusion(dtype = query, shape = output_shape(query, value))]
    fn flash_attention_unit(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        causal: bool,
    ) -> FloatTensor<Self>;
}

impl FlashAttention for CubeBackend {
    fn flash_attention_unit(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        causal: bool,
    ) -> FloatTensor<Self> {
        use burn_cubecl::kernel::attention::{AttentionStrategy, attention};
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: causal,
        };
        // A kernel that cannot be set up for this problem or device degrades to burn's fallback
        // (separate kernels) rather than trapping; burn itself does the same for invalid
        // configurations.
        attention(
            query.clone(),
            key.clone(),
            value.clone(),
            None,
            None,
            options,
            AttentionStrategy::FlashUnit,
        )
        .unwrap_or_else(|_| {
            burn::backend::ops::attention::attention_fallback::<CubeBackend>(
                query, key, value, None, None, options,
            )
        })
    }
}

/// `softmax(q kᵀ / √d) v` on `[B, H, L, d]` tensors of a wgpu device by the unit flash kernel
/// (given row-major copies: see `attention::row_major`). Only where
/// [`crate::kernels::device::flash_attention_runs`] holds: burn panics on a device of another backend.
pub fn flash_attention_unit(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, causal: bool) -> Tensor<4> {
    use super::row_major;
    Tensor::from_dispatch(<Dispatch as FlashAttention>::flash_attention_unit(
        row_major(q).into_dispatch(),
        row_major(k).into_dispatch(),
        row_major(v).into_dispatch(),
        causal,
    ))
}
