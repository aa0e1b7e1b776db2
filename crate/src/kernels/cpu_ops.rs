//! Element-wise fast paths for the CPU device (f32): GroupNorm fused with SiLU, SiLU, exact
//! GELU and GEGLU as one vectorised pass each on the host, in place of burn's generic
//! compositions (its SiLU is `x * sigmoid(x)` in two passes with a scalar `exp`, its GELU a scalar
//! libm `erf`; in SD1.5's UNet at 64×64 they run over ~150 M values per step).
//!
//! The model code calls [`GroupNorm::forward_act`](crate::models::nn::GroupNorm::forward_act),
//! [`Activation::forward`](crate::models::nn::Activation::forward) and `FeedForward::forward` as before;
//! they come here only for f32 tensors on the CPU device (natively and in wasm) and otherwise
//! run the plain tensor ops, which the tests below hold these kernels to.

use burn::tensor::{DType, Tensor, TensorData, activation};

use super::for_chunks;

/// Whether the host kernels apply: an f32 tensor on the CPU device.
pub fn applies<const D: usize>(x: &Tensor<D>) -> bool {
    x.dtype() == DType::F32 && crate::kernels::device::is_cpu(&x.device())
}

/// `f` over an f32 CPU-device tensor's values where they lie (no copy; the tensor is not
/// consumed), or `None` for other tensors and for strided views.
pub(crate) fn with_host_values<const D: usize, R>(
    t: &Tensor<D>,
    f: impl FnOnce(&[f32]) -> R,
) -> Option<R> {
    let p = t.clone().try_into_primitive::<burn::backend::Flex>().ok()?;
    p.as_slice::<f32>().map(f)
}

/// `f` over the tensor's values in place (no copy when the tensor is not shared), or `plain`
/// where the host kernels do not apply.
fn in_place<const D: usize>(
    x: Tensor<D>,
    f: impl FnOnce(&mut [f32]),
    plain: impl FnOnce(Tensor<D>) -> Tensor<D>,
) -> Tensor<D> {
    if !applies(&x) {
        return plain(x);
    }
    let device = x.device();
    let mut data = x.into_data();
    match data.as_mut_slice::<f32>() {
        Ok(values) => {
            f(values);
            Tensor::from_data(data, &device)
        }
        Err(_) => plain(Tensor::from_data(data, &device)),
    }
}

/// Values per parallel task of the element-wise kernels.
const CHUNK: usize = 1 << 15;

/// `silu(x)`.
pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    in_place(
        x,
        |v| for_chunks(v, CHUNK, |_, c| silu_slice(c)),
        activation::silu,
    )
}

/// Exact (erf) `gelu(x)`.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    in_place(
        x,
        |v| for_chunks(v, CHUNK, |_, c| gelu_slice(c)),
        activation::gelu,
    )
}

/// GEGLU on `[b, n, 2·inner]`: `h[.., ..inner] * gelu(h[.., inner..])`, `[b, n, inner]`.
pub fn geglu(h: Tensor<3>) -> Tensor<3> {
    let [b, n, two_inner] = h.dims();
    let inner = two_inner / 2;
    let plain =
        |h: Tensor<3>| h.clone().narrow(2, 0, inner) * activation::gelu(h.narrow(2, inner, inner));
    if !applies(&h) || inner == 0 || two_inner % 2 != 0 {
        return plain(h);
    }
    let device = h.device();
    let data = h.into_data();
    let Ok(v) = data.as_slice::<f32>() else {
        return plain(Tensor::from_data(data, &device));
    };
    let mut out = vec![0f32; b * n * inner];
    // Whole rows per task, about CHUNK outputs each.
    let rows = (CHUNK / inner).max(1);
    for_chunks(&mut out, rows * inner, |i, o| {
        let first = i * rows;
        for (r, orow) in o.chunks_mut(inner).enumerate() {
            geglu_row(&v[(first + r) * two_inner..][..two_inner], orow);
        }
    });
    Tensor::from_data(TensorData::new(out, [b, n, inner]), &device)
}

/// GroupNorm (affine: `weight`, `bias` per channel) over `[b, c, h, w]`, with SiLU after it when
/// `silu`: per (sample, group) the mean and variance (two passes, f32 lane sums), then one pass
/// that normalises, applies the channel's affine and the activation. `plain` computes the same
/// with tensor ops where the host kernels do not apply.
pub fn group_norm(
    x: Tensor<4>,
    weight: &Tensor<1>,
    bias: &Tensor<1>,
    groups: usize,
    eps: f64,
    silu: bool,
    plain: impl FnOnce(Tensor<4>) -> Tensor<4>,
) -> Tensor<4> {
    let [_, c, h, w] = x.dims();
    let params = |t: &Tensor<1>| {
        if applies(t) {
            t.clone().into_data().try_into_vec::<f32>().ok()
        } else {
            None
        }
    };
    let (Some(weight), Some(bias)) = (params(weight), params(bias)) else {
        return plain(x);
    };
    if groups == 0 || c % groups != 0 || weight.len() != c || bias.len() != c || c * h * w == 0 {
        return plain(x);
    }
    let (cg, hw) = (c / groups, h * w);
    in_place(
        x,
        |v| {
            for_chunks(v, cg * hw, |i, slice| {
                let c0 = (i % groups) * cg;
                let (w, b) = (&weight[c0..c0 + cg], &bias[c0..c0 + cg]);
                group_norm_slice(slice, hw, w, b, eps as f32, silu);
            })
        },
        plain,
    )
}

/// Defines `fn $name(args)` that runs its body compiled for AVX-512 or AVX2+FMA where the CPU
/// has them (chosen at run time; the build targets baseline x86-64), as plain code otherwise
/// (wasm: SIMD128 from the build flags).
macro_rules! simd_fn {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$doc])*
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn generic($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    generic($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    generic($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features this copy was compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has the features this copy was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            generic($($arg),*)
        }
    };
}

pub(crate) use simd_fn;

/// Lanes the loops are written over (so that they vectorise: no serial accumulator chains).
const LANES: usize = 16;

simd_fn!(
    fn silu_slice(xs: &mut [f32]) {
        for x in xs.iter_mut() {
            *x = silu_one(*x);
        }
    }
);

simd_fn!(
    fn gelu_slice(xs: &mut [f32]) {
        for x in xs.iter_mut() {
            *x = gelu_one(*x);
        }
    }
);

simd_fn!(
    fn geglu_row(row: &[f32], out: &mut [f32]) {
        let (hidden, gate) = row.split_at(out.len());
        for ((o, h), g) in out.iter_mut().zip(hidden).zip(gate) {
            *o = h * gelu_one(*g);
        }
    }
);

simd_fn!(
    fn group_norm_slice(
        xs: &mut [f32],
        hw: usize,
        weight: &[f32],
        bias: &[f32],
        eps: f32,
        silu: bool,
    ) {
        let n = xs.len() as f32;
        let lane_sum = |f: &dyn Fn(f32) -> f32| -> f32 {
            let mut acc = [0f32; LANES];
            let mut chunks = xs.chunks_exact(LANES);
            for c in &mut chunks {
                for (a, x) in acc.iter_mut().zip(c) {
                    *a += f(*x);
                }
            }
            chunks.remainder().iter().map(|x| f(*x)).sum::<f32>() + acc.iter().sum::<f32>()
        };
        let mean = lane_sum(&|x| x) / n;
        let var = lane_sum(&|x| (x - mean) * (x - mean)) / n;
        let rstd = 1.0 / (var + eps).sqrt();
        for ((channel, w), b) in xs.chunks_mut(hw).zip(weight).zip(bias) {
            let scale = rstd * w;
            let shift = b - mean * scale;
            if silu {
                for x in channel.iter_mut() {
                    *x = silu_one(*x * scale + shift);
                }
            } else {
                for x in channel.iter_mut() {
                    *x = *x * scale + shift;
                }
            }
        }
    }
);

/// `e^x` for `x <= 0` (a softmax after subtracting the row maximum, `e^-|x|`), relative error
/// below 2e-7, branch-free so loops over it vectorise: `x = n·ln 2 + r` with `n` rounded by the
/// 1.5·2²³ trick, a degree-6 polynomial for `e^r` on |r| ≤ ln2/2, and `2^n` built in the
/// exponent bits. Values below -87 (and -inf) give 0; NaN stays NaN.
#[inline(always)]
pub fn exp_nonpositive_one(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23
    let v = if x < -87.0 { -87.0 } else { x }; // NaN stays NaN
    // `t`'s low mantissa bits hold `n` (|n| ≤ 126): no float-to-int conversion, whose
    // saturating semantics would keep the loops around this function from vectorising.
    let t = v * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (v - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23);
    if x < -87.0 { 0.0 } else { p * scale }
}

/// `x · sigmoid(x)` with `e^-|x|` (never overflows): `x / (1 + e)` for `x ≥ 0`,
/// `x · e / (1 + e)` below.
#[inline(always)]
fn silu_one(x: f32) -> f32 {
    let e = exp_nonpositive_one(-x.abs());
    let num = if x >= 0.0 { x } else { x * e };
    num / (1.0 + e)
}

/// Exact GELU, `x · Φ(x)`, through `erfc(|x|/√2)` (Abramowitz & Stegun 7.1.26: absolute error
/// below 1.5e-7 in erf): `x - x·erfc/2` for `x ≥ 0`, `x·erfc/2` below (no cancellation in the
/// negative tail).
#[inline(always)]
fn gelu_one(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_72,
        1.421_413_8,
        -1.453_152,
        1.061_405_4,
    ];
    // Beyond |x| ≈ 13 the exp term is 0 (exp_nonpositive_one gives 0 below -87); clamping keeps
    // ±inf from making inf·0.
    let xc = x.clamp(-20.0, 20.0);
    let z = xc.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + P * z);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let half_erfc = 0.5 * poly * exp_nonpositive_one(-z * z);
    let g = xc * half_erfc;
    if x >= 0.0 { x - g } else { g }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> burn::tensor::Device {
        burn::tensor::Device::flex()
    }

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    /// Largest |a - b| relative to the largest |b| (at least 1).
    fn rel_err(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let max = b.iter().fold(1f32, |m, x| m.max(x.abs()));
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / max
    }

    fn normals<const D: usize>(seed: u64, shape: [usize; D], scale: f32) -> Tensor<D> {
        let n = shape.iter().product();
        let v = crate::rng::Pcg32::new(seed)
            .normals(n)
            .into_iter()
            .map(|x| x * scale)
            .collect::<Vec<_>>();
        Tensor::from_data(TensorData::new(v, shape), &dev())
    }

    /// SiLU and GELU against burn's (libm `exp` / `erf`) on normals of spread 4 and on edge
    /// values: within 3e-7 absolute (GELU's erf approximation: 1.5e-7 · |x|/2 at most).
    #[test]
    fn activations_match_burn() {
        let mut xs = values(normals(1, [70_001], 4.0));
        xs.extend([
            0.0, -0.0, 1e-30, -1e-30, 9.0, -9.0, 30.0, -30.0, 100.0, -100.0,
        ]);
        let n = xs.len();
        let x = Tensor::<1>::from_data(TensorData::new(xs.clone(), [n]), &dev());
        for (name, got, want) in [
            ("silu", silu(x.clone()), activation::silu(x.clone())),
            ("gelu", gelu(x.clone()), activation::gelu(x.clone())),
        ] {
            let (got, want) = (values(got), values(want));
            let err = got
                .iter()
                .zip(&want)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs() / b.abs().max(1.0)));
            assert!(err < 3e-7, "{name}: max error {err}");
        }
        let special = [f32::INFINITY, f32::NEG_INFINITY, f32::NAN];
        let s = Tensor::<1>::from_data(TensorData::new(special.to_vec(), [3]), &dev());
        let g = values(gelu(s.clone()));
        assert_eq!(g[0], f32::INFINITY);
        assert_eq!(g[1], 0.0);
        assert!(g[2].is_nan());
        let s = values(silu(s));
        assert_eq!(s[0], f32::INFINITY);
        assert!(s[2].is_nan());
    }

    /// GEGLU against narrow + burn's GELU + multiply (rows not a multiple of a task's rows).
    #[test]
    fn geglu_matches_plain() {
        let inner = 96;
        let h = normals(2, [2, 1001, 2 * inner], 3.0);
        let want =
            h.clone().narrow(2, 0, inner) * activation::gelu(h.clone().narrow(2, inner, inner));
        let got = geglu(h);
        assert_eq!(got.dims(), [2, 1001, inner]);
        let err = rel_err(&values(got), &values(want));
        assert!(err < 1e-6, "geglu: {err}");
    }
}
