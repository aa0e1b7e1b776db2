//! *How* scaled-dot-product attention is computed. The model files say *what* attention
//! computes (projections, heads, masks) and call [`sdpa`]; this file picks the kernel.
//!
//! The default kernel is sliced: scores are materialised for a slice of (batch·head, query)
//! rows at a time, so no scores buffer exceeds a byte budget. SD1.5 self-attention at a 64×64
//! latent would need 2·8·4096·4096·4 B = 1 GiB of scores at once; at the default budget
//! (128 MiB) it runs in slices that fit WebGPU's default storage-binding limit.

use burn::tensor::{Bool, Tensor, TensorData, activation::softmax};

use crate::kernels::cpu_ops::exp_nonpositive_one;

/// Default budget for one materialised scores buffer.
pub const DEFAULT_MAX_SCORES_BYTES: usize = 128 << 20;

/// Largest head size [`AttentionKernel::Fused`] gives burn's fused operation. CubeCL's flash
/// kernels keep a query row's whole head in registers: SD1.5's UNet (40, 80, 160) and CLIP (64)
/// fit; wider heads (the VAE's single 512-wide one) take the sliced kernel (BENCHMARKS.md: the
/// flash kernel did not finish at that width).
pub const FUSED_MAX_HEAD_DIM: usize = 160;

/// Which kernel computes attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKernel {
    /// `softmax(q kᵀ · scale) v`, sliced so one scores buffer stays within `max_bytes`.
    Sliced { max_bytes: usize },
    /// CubeCL's flash kernels on wgpu where the adapter has subgroups (natively burn's fused
    /// attention operation, autotuned; in the browser the unit kernel, `flash.rs`; see
    /// [`crate::kernels::device::flash_attention_runs`]): no scores buffer at all. Elsewhere, and for
    /// heads wider than [`FUSED_MAX_HEAD_DIM`], the sliced kernel within `max_bytes`.
    /// (On the CPU device in f32 both kernels are the host kernel, see
    /// `host_attention_applies`.)
    Fused { max_bytes: usize },
}

impl AttentionKernel {
    /// The kernel named `name` (`sliced` or `fused`); `max_bytes` is the sliced kernel's budget
    /// (for `fused`: where the sliced kernel stands in).
    pub fn from_name(name: &str, max_bytes: usize) -> crate::Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "sliced" => Ok(AttentionKernel::Sliced {
                max_bytes: max_bytes.max(1),
            }),
            "fused" | "flash" => Ok(AttentionKernel::Fused {
                max_bytes: max_bytes.max(1),
            }),
            other => Err(crate::Error::invalid(format!(
                "unknown attention kernel `{other}` (expected sliced or fused)"
            ))),
        }
    }

    /// burn's fused operation with the default budget where the sliced kernel stands in.
    pub fn fused() -> Self {
        AttentionKernel::Fused {
            max_bytes: DEFAULT_MAX_SCORES_BYTES,
        }
    }

    /// The budget for one buffer this kernel was given: the largest scores slice, and the
    /// VAE decoder's row bands.
    pub fn max_buffer_bytes(&self) -> usize {
        match *self {
            AttentionKernel::Sliced { max_bytes } | AttentionKernel::Fused { max_bytes } => {
                max_bytes
            }
        }
    }

    /// A short name: `sliced` or `fused`.
    pub fn name(&self) -> &'static str {
        match self {
            AttentionKernel::Sliced { .. } => "sliced",
            AttentionKernel::Fused { .. } => "fused",
        }
    }
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
    if host_attention_applies(&q) {
        return host_sdpa(q, k, v, scale, causal);
    }
    match kernel {
        AttentionKernel::Fused { max_bytes }
            if q.dims()[3] > FUSED_MAX_HEAD_DIM
                || !crate::kernels::device::flash_attention_runs(&q.device()) =>
        {
            sliced(q, k, v, scale, causal, max_bytes)
        }
        AttentionKernel::Fused { .. } => flash(rescale_for_default(q, scale), k, v, causal),
        AttentionKernel::Sliced { max_bytes } => sliced(q, k, v, scale, causal, max_bytes),
    }
}

/// Attention with burn's default scale by a flash kernel: natively burn's fused operation (its
/// autotuner picks among CubeCL's flash kernels), in the browser CubeCL's unit kernel by name.
#[cfg(not(target_arch = "wasm32"))]
fn flash(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, causal: bool) -> Tensor<4> {
    use burn::tensor::{module::attention, ops::AttentionModuleOptions};
    let options = AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal: causal,
    };
    attention(
        super::row_major(q),
        super::row_major(k),
        super::row_major(v),
        None,
        None,
        options,
    )
}

#[cfg(all(target_arch = "wasm32", feature = "webgpu"))]
fn flash(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, causal: bool) -> Tensor<4> {
    super::flash::flash_attention_unit(q, k, v, causal)
}

/// Not reached: the threaded CPU build has no device that runs flash kernels.
#[cfg(all(target_arch = "wasm32", not(feature = "webgpu")))]
fn flash(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, causal: bool) -> Tensor<4> {
    let scale = (q.dims()[3] as f64).powf(-0.5);
    sliced(q, k, v, scale, causal, DEFAULT_MAX_SCORES_BYTES)
}

/// burn's CubeCL backends run their flash kernels only with the default scale (1/√head size;
/// any explicit `scale` falls back to separate kernels over a materialised scores matrix), so a
/// different scale is folded into the queries instead.
fn rescale_for_default(q: Tensor<4>, scale: f64) -> Tensor<4> {
    let default = (q.dims()[3] as f64).powf(-0.5);
    if (scale / default - 1.0).abs() < 1e-12 {
        q
    } else {
        q * (scale / default)
    }
}

/// On the CPU device (f32), attention runs on the host in blocks of query rows, whichever kernel
/// was asked for (scores for one block stay in cache; blocks in parallel natively) instead of as
/// separate matmul / softmax kernels over whole score matrices: burn's CPU softmax takes a
/// scalar `exp` per score, and SD1.5's self-attention at 64×64 has 268 M scores per layer.
fn host_attention_applies(q: &Tensor<4>) -> bool {
    crate::kernels::device::is_cpu(&q.device()) && q.dtype() == burn::tensor::DType::F32
}

fn host_sdpa(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64, causal: bool) -> Tensor<4> {
    let [b, h, lq, dh] = q.dims();
    let lk = k.dims()[2];
    let dv = v.dims()[3];
    let device = q.device();
    let host = |t: &Tensor<4>| t.clone().into_data().try_into_vec::<f32>();
    match (host(&q), host(&k), host(&v)) {
        (Ok(q), Ok(k), Ok(v)) => {
            let shape = HostShape {
                bh: b * h,
                lq,
                lk,
                dh,
                dv,
            };
            let out = host_attention(&q, &k, &v, shape, scale as f32, causal);
            Tensor::from_data(TensorData::new(out, [b, h, lq, dv]), &device)
        }
        // Not expected for f32 CPU tensors; the device kernels give the same result.
        _ => sliced(q, k, v, scale, causal, DEFAULT_MAX_SCORES_BYTES),
    }
}

std::thread_local! {
    /// One block's scores, per thread (at most ~2 MiB: see `host_attention`'s block rows).
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Shapes of [`host_attention`]'s row-major operands: q `[bh, lq, dh]`, k `[bh, lk, dh]`,
/// v `[bh, lk, dv]`.
#[derive(Debug, Clone, Copy)]
pub struct HostShape {
    pub bh: usize,
    pub lq: usize,
    pub lk: usize,
    pub dh: usize,
    pub dv: usize,
}

/// `softmax(q kᵀ · scale) v` on host slices (output `[bh, lq, dv]`), `causal`: query row `i`
/// sees keys `0..=i`. Each task takes one (batch·head, block of query rows): scores by gemm,
/// the softmax numerators (`e^(s - max)`, two passes), the weighted sum of values by gemm, and
/// the division by the row sums on the output block.
pub fn host_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: HostShape,
    scale: f32,
    causal: bool,
) -> Vec<f32> {
    let HostShape { bh, lq, lk, dh, dv } = s;
    let mut out = vec![0f32; bh * lq * dv];
    if bh == 0 || lq == 0 || dv == 0 {
        return out;
    }
    // Query rows per task: a block's scores within ~2 MiB (of 64 KiB, 256 KiB, 1 MiB and 2 MiB,
    // the fastest for SD1.5's 4,096-token self-attention on a 2-core AVX-512 machine).
    let rows = ((2048 << 10) / (lk.max(1) * 4)).clamp(8, 256).min(lq);
    let blocks_per_head = lq.div_ceil(rows);
    let task = |(t, o): (usize, &mut [f32])| {
        let (head, i0) = (t / blocks_per_head, (t % blocks_per_head) * rows);
        let m = rows.min(lq - i0);
        let qb = &q[(head * lq + i0) * dh..][..m * dh];
        let kh = &k[head * lk * dh..][..lk * dh];
        let vh = &v[head * lk * dv..][..lk * dv];
        // The scores block reuses this thread's buffer (no allocation or zeroing per block:
        // the gemm overwrites it).
        SCORES.with_borrow_mut(|buf| {
            if buf.len() < m * lk {
                buf.resize(m * lk, 0.0);
            }
            let p = &mut buf[..m * lk];
            // SAFETY: every pointer covers the strided extent gemm reads or writes: scores
            // `[m, lk]` row-major = qb `[m, dh]` · khᵀ (kh `[lk, dh]` read column-major).
            unsafe {
                gemm::gemm(
                    m,
                    lk,
                    dh,
                    p.as_mut_ptr(),
                    1,
                    lk as isize,
                    false,
                    qb.as_ptr(),
                    1,
                    dh as isize,
                    kh.as_ptr(),
                    dh as isize,
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            // Unnormalised weights `e^(s - max)` per row; the division by the row's sum is applied
            // to the `[m, dv]` output instead of the `[m, lk]` weights.
            let mut inv_sums = vec![0f32; m];
            for (r, (row, inv)) in p.chunks_mut(lk).zip(&mut inv_sums).enumerate() {
                let visible = if causal { (i0 + r + 1).min(lk) } else { lk };
                *inv = 1.0 / softmax_numerators(row, visible);
            }
            // SAFETY: out block `[m, dv]` = p `[m, lk]` · vh `[lk, dv]`, all row-major.
            unsafe {
                gemm::gemm(
                    m,
                    dv,
                    lk,
                    o.as_mut_ptr(),
                    1,
                    dv as isize,
                    false,
                    p.as_ptr(),
                    1,
                    lk as isize,
                    vh.as_ptr(),
                    1,
                    dv as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            for (row, inv) in o.chunks_mut(dv).zip(&inv_sums) {
                row.iter_mut().for_each(|x| *x *= inv);
            }
        });
    };
    // Output blocks line up with tasks: block t is rows i0..i0+m of head t / blocks_per_head.
    let mut chunks = split_blocks(&mut out, bh, lq, rows, dv);
    // One task per block: pieces of one.
    super::for_chunks(&mut chunks, 1, |i, c| task((i, &mut *c[0])));
    out
}

/// `out` `[bh, lq, dv]` cut into per-task blocks of `rows` query rows (the last of each head
/// shorter).
fn split_blocks(out: &mut [f32], bh: usize, lq: usize, rows: usize, dv: usize) -> Vec<&mut [f32]> {
    let mut blocks = Vec::with_capacity(bh * lq.div_ceil(rows));
    for head in out.chunks_mut(lq * dv) {
        let mut rest = head;
        while !rest.is_empty() {
            let n = (rows * dv).min(rest.len());
            let (a, b) = rest.split_at_mut(n);
            blocks.push(a);
            rest = b;
        }
    }
    blocks
}

crate::kernels::cpu_ops::simd_fn!(
    /// `row[..visible]` becomes `e^(x - max)` (the softmax's numerators) and the rest 0; returns
    /// their sum (≥ 1: the maximum's own term). Two passes: the maximum, then exp and sum together.
    fn softmax_numerators(row: &mut [f32], visible: usize) -> f32 {
        const LANES: usize = 16;
        let (seen, masked) = row.split_at_mut(visible);
        masked.fill(0.0);
        // Lane-wise maximum and sum so the loops vectorise (a single accumulator is a serial chain).
        let mut m = [f32::NEG_INFINITY; LANES];
        let mut chunks = seen.chunks_exact(LANES);
        for c in &mut chunks {
            for (a, x) in m.iter_mut().zip(c) {
                *a = a.max(*x);
            }
        }
        let max = chunks
            .remainder()
            .iter()
            .chain(m.iter())
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        let mut acc = [0f32; LANES];
        let mut chunks = seen.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for (a, x) in acc.iter_mut().zip(c) {
                *x = exp_nonpositive_one(*x - max);
                *a += *x;
            }
        }
        let mut sum = acc.iter().sum::<f32>();
        for x in chunks.into_remainder() {
            *x = exp_nonpositive_one(*x - max);
            sum += *x;
        }
        sum
    }
);

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

    /// The host kernel against the sliced kernel (burn's matmul + softmax) on the CPU device:
    /// self- and cross-shaped, causal, a query length that is not a multiple of the block.
    #[test]
    fn host_attention_matches_sliced() {
        let dev = burn::tensor::Device::flex();
        let mut rng = crate::rng::Pcg32::new(11);
        for (b, h, lq, lk, dh, dv, causal) in [
            (2, 3, 77, 77, 16, 16, true),
            (1, 2, 300, 77, 40, 40, false),
            (2, 1, 1030, 1030, 8, 12, false),
        ] {
            let mut t = |l: usize, d: usize| {
                Tensor::<4>::from_data(
                    TensorData::new(rng.normals(b * h * l * d), [b, h, l, d]),
                    &dev,
                ) * 2.0
            };
            let (q, k, v) = (t(lq, dh), t(lk, dh), t(lk, dv));
            let scale = (dh as f64).powf(-0.5);
            let want = sliced(q.clone(), k.clone(), v.clone(), scale, causal, 1 << 20);
            let got = sdpa(q, k, v, scale, causal, AttentionKernel::default());
            let (w, g) = (
                want.into_data().try_to_vec::<f32>().unwrap(),
                got.into_data().try_to_vec::<f32>().unwrap(),
            );
            let max = w.iter().fold(0f32, |m, x| m.max(x.abs()));
            let err = w
                .iter()
                .zip(&g)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                err <= 1e-5 * max,
                "{lq}x{lk} causal={causal}: max diff {err} (max {max})"
            );
        }
    }

    #[test]
    fn exp_matches_std() {
        let mut xs: Vec<f32> = (0..20000).map(|i| -(i as f32) * 0.0045).collect();
        xs.extend([0.0, -1e-8, -86.9, -87.5, -1000.0, f32::NEG_INFINITY]);
        let got: Vec<f32> = xs.iter().map(|&x| exp_nonpositive_one(x)).collect();
        for (x, g) in xs.iter().zip(&got) {
            let want = x.exp();
            if *x < -87.0 {
                assert_eq!(*g, 0.0);
            } else {
                assert!(
                    (g - want).abs() <= 3e-7 * want,
                    "exp({x}) = {g}, std {want}"
                );
            }
        }
        assert!(exp_nonpositive_one(f32::NAN).is_nan());
    }

    #[test]
    fn kernels_by_name() {
        assert_eq!(
            AttentionKernel::from_name("sliced", 1 << 20).unwrap(),
            AttentionKernel::Sliced { max_bytes: 1 << 20 }
        );
        let fused = AttentionKernel::from_name("Fused", 1 << 22).unwrap();
        assert_eq!(fused, AttentionKernel::Fused { max_bytes: 1 << 22 });
        assert_eq!(fused.max_buffer_bytes(), 1 << 22);
        assert_eq!(fused.name(), "fused");
        let e = AttentionKernel::from_name("paged", 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown attention kernel `paged`"), "{e}");
    }

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
