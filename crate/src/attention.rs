//! *How* scaled-dot-product attention is computed. The model files say *what* attention
//! computes (projections, heads, masks) and call [`sdpa`]; this file picks the kernel.
//!
//! The default kernel is sliced: scores are materialised for a slice of (batch·head, query)
//! rows at a time, so no scores buffer exceeds a byte budget. SD1.5 self-attention at a 64×64
//! latent would need 2·8·4096·4096·4 B = 1 GiB of scores at once; at the default budget
//! (128 MiB) it runs in slices that fit WebGPU's default storage-binding limit.

use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Tensor, activation::softmax};

/// Default budget for one materialised scores buffer.
pub const DEFAULT_MAX_SCORES_BYTES: usize = 128 << 20;

/// Which kernel computes attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKernel {
    /// `softmax(q kᵀ · scale) v`, sliced so one scores buffer stays within `max_bytes`.
    Sliced { max_bytes: usize },
    /// burn's fused attention operation (flash-style where the backend has one).
    Fused,
}

impl Default for AttentionKernel {
    fn default() -> Self {
        AttentionKernel::Sliced {
            max_bytes: DEFAULT_MAX_SCORES_BYTES,
        }
    }
}

/// Scaled dot-product attention on `[B, H, L, Dh]` tensors.
pub fn sdpa(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    scale: f64,
    causal: bool,
    kernel: AttentionKernel,
) -> Tensor<4> {
    match kernel {
        AttentionKernel::Fused => attention(
            q,
            k,
            v,
            None,
            None,
            AttentionModuleOptions {
                scale: Some(scale),
                softcap: None,
                is_causal: causal,
            },
        ),
        AttentionKernel::Sliced { max_bytes } => sliced(q, k, v, scale, causal, max_bytes),
    }
}

/// How many (batch·head) rows and query rows one slice takes so that
/// `bh_chunk · q_chunk · lk · 4 B <= max_bytes` (at least one row of one head).
pub fn slice_plan(bh: usize, lq: usize, lk: usize, max_bytes: usize) -> (usize, usize) {
    let row_bytes = lk.max(1) * 4;
    let rows = (max_bytes / row_bytes).max(1);
    if rows >= lq {
        ((rows / lq.max(1)).clamp(1, bh.max(1)), lq)
    } else {
        (1, rows)
    }
}

fn sliced(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    scale: f64,
    causal: bool,
    max_bytes: usize,
) -> Tensor<4> {
    let [b, h, lq, dh] = q.dims();
    let lk = k.dims()[2];
    let dv = v.dims()[3];
    let bh = b * h;
    let device = q.device();
    let q = q.reshape([bh, lq, dh]) * scale;
    let k = k.reshape([bh, lk, dh]);
    let v = v.reshape([bh, lk, dv]);
    let (bh_chunk, q_chunk) = slice_plan(bh, lq, lk, max_bytes);

    let one = |qs: Tensor<3>, ks: Tensor<3>, vs: Tensor<3>, q0: usize| -> Tensor<3> {
        let mut scores = qs.matmul(ks.swap_dims(1, 2));
        if causal {
            let [n, rows, cols] = scores.dims();
            let mask = Tensor::<2, Bool>::tril_mask([rows, cols], q0 as i64, &device)
                .unsqueeze_dim::<3>(0)
                .expand([n, rows, cols]);
            scores = scores.mask_fill(mask, f32::NEG_INFINITY);
        }
        softmax(scores, 2).matmul(vs)
    };

    if bh_chunk >= bh && q_chunk >= lq {
        return one(q, k, v, 0).reshape([b, h, lq, dv]);
    }
    let mut outs = Vec::new();
    for s in (0..bh).step_by(bh_chunk) {
        let n = bh_chunk.min(bh - s);
        let qs = q.clone().narrow(0, s, n);
        let ks = k.clone().narrow(0, s, n);
        let vs = v.clone().narrow(0, s, n);
        if q_chunk >= lq {
            outs.push(one(qs, ks, vs, 0));
        } else {
            let mut rows = Vec::new();
            for q0 in (0..lq).step_by(q_chunk) {
                let m = q_chunk.min(lq - q0);
                rows.push(one(qs.clone().narrow(1, q0, m), ks.clone(), vs.clone(), q0));
            }
            outs.push(Tensor::cat(rows, 1));
        }
    }
    Tensor::cat(outs, 0).reshape([b, h, lq, dv])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_respects_budget() {
        // SD1.5 self-attention at 64x64 latent, CFG batch 2, 8 heads.
        let (bhc, qc) = slice_plan(16, 4096, 4096, DEFAULT_MAX_SCORES_BYTES);
        assert!(bhc * qc * 4096 * 4 <= DEFAULT_MAX_SCORES_BYTES);
        assert_eq!((bhc, qc), (2, 4096));
        // Small problems run in one slice.
        assert_eq!(slice_plan(16, 77, 77, DEFAULT_MAX_SCORES_BYTES), (16, 77));
        // A budget below one row still makes progress.
        assert_eq!(slice_plan(2, 10, 1000, 1), (1, 1));
    }
}
