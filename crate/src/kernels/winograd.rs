//! 3×3 convolutions on the host for the CPU device by Winograd's minimal filtering, F(m×m, 3×3)
//! (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016), m = 4 or 2.
//!
//! A direct (im2col + gemm) 3×3 convolution spends 9 multiply-adds per output value and input
//! channel. Winograd's form computes an m×m output tile from an (m+2)×(m+2) input tile with
//! (m+2)² products: 36 instead of 144 for m = 4 (4× fewer), 16 instead of 36 for m = 2 (2.25×).
//! Per tile position ξ of the (m+2)² the products over channels are one gemm,
//! `M[ξ] (tiles × c_out) = V[ξ] (tiles × c_in) · U[ξ] (c_in × c_out)`, with
//! - `U = G g Gᵀ` the transformed weights (per output and input channel),
//! - `V = Bᵀ d B` the transformed input tiles (per tile and input channel),
//! - `Y = Aᵀ M A` the output tile (per tile and output channel), plus the bias.
//!
//! Half of SD1.5's UNet FLOPs at 64×64 are 3×3 stride-1 convolutions; on the CPU the gemm is
//! ~80 % of a step, so this is where the algorithm, not the kernel, has room. The results
//! differ from the direct sum only by rounding (the transforms' constants are exact in f32 up
//! to 1/6, 1/12, 1/24); the tests below hold both tile sizes to burn's convolution.
//!
//! Everything here is plain Rust on slices (vectorised over 16 channels at a time, AVX-512 /
//! AVX2 chosen at run time natively, SIMD128 in wasm) and the `gemm` crate burn's CPU backend
//! uses; blocks of work run in parallel natively and in the threaded wasm build.

use burn::tensor::module::conv2d as burn_conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor, TensorData};

use super::{for_chunks, for_each_index};

/// Output tile size of the Winograd form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tile {
    /// F(2×2, 3×3): 4×4 input tiles, 16 products per tile (2.25× fewer than direct).
    F2,
    /// F(4×4, 3×3): 6×6 input tiles, 36 products per tile (4× fewer than direct).
    F4,
}

/// Which convolution kernel the CPU device uses for 3×3 stride-1 convolutions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Winograd where [`choose`] expects it to be faster, burn's convolution elsewhere.
    #[default]
    Auto,
    /// Always burn's convolution.
    Off,
    /// This tile size wherever the convolution's shape allows Winograd at all.
    Force(Tile),
}

impl std::str::FromStr for Policy {
    type Err = crate::Error;
    /// `0` (off), `2` or `4` (that tile size forced), `auto`: what the CLI's and the tests'
    /// `FASTCOMPOSER_WINOGRAD` take.
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "0" => Ok(Policy::Off),
            "2" => Ok(Policy::Force(Tile::F2)),
            "4" => Ok(Policy::Force(Tile::F4)),
            "auto" | "" => Ok(Policy::Auto),
            other => Err(crate::Error::invalid(format!(
                "unknown Winograd policy `{other}` (expected 0, 2, 4 or auto)"
            ))),
        }
    }
}

/// A 3×3 convolution's shape: input `[n, c_in, h, w]`, weight `[c_out, c_in, 3, 3]`, zero
/// padding `(before, after)` for rows and for columns, stride 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub n: usize,
    pub c_in: usize,
    pub c_out: usize,
    pub h: usize,
    pub w: usize,
    pub pad: [(usize, usize); 2],
}

impl Shape {
    /// Output height and width.
    pub fn out_hw(&self) -> (usize, usize) {
        (
            (self.h + self.pad[0].0 + self.pad[0].1).saturating_sub(2),
            (self.w + self.pad[1].0 + self.pad[1].1).saturating_sub(2),
        )
    }
}

/// The tile size expected to beat burn's convolution for this shape, if any. The weight
/// transform costs (m+2)² values per channel pair on every call, which only pays off when
/// there are enough output tiles to share it, and narrow convolutions (SD's 4-channel in/out)
/// gain nothing. Thresholds from `bench-ops --device cpu` with `FASTCOMPOSER_WINOGRAD` = 0 / 2 / 4
/// at SD1.5's levels (BENCHMARKS.md).
pub fn choose(s: &Shape) -> Option<Tile> {
    let (ho, wo) = s.out_hw();
    if s.c_in < 16 || s.c_out < 16 || ho == 0 || wo == 0 {
        return None;
    }
    let tiles = |m: usize| s.n * ho.div_ceil(m) * wo.div_ceil(m);
    if tiles(4) >= 128 {
        Some(Tile::F4)
    } else if tiles(2) >= 128 {
        Some(Tile::F2)
    } else {
        None
    }
}

/// `conv2d` as burn computes it, by Winograd's form on the host where it applies (f32 tensors
/// on the CPU device, 3×3 stride 1, and `policy` picks a tile size for the shape).
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
    policy: Policy,
) -> Tensor<4> {
    let [n, c_in, h, w] = x.dims();
    let wd = weight.dims();
    let shape = Shape {
        n,
        c_in,
        c_out: wd[0],
        h,
        w,
        pad: options.padding,
    };
    let tile = match policy {
        Policy::Off => None,
        Policy::Auto => choose(&shape),
        Policy::Force(t) => (c_in > 0 && wd[0] > 0).then_some(t),
    };
    let host = x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && crate::kernels::device::is_cpu(&x.device())
        && wd[1] == c_in
        && is_3x3_stride_1(wd, &options);
    let Some(tile) = tile.filter(|_| host) else {
        return burn_conv2d(x, weight, bias, options);
    };
    let device = x.device();
    let bias_vec = match &bias {
        Some(b) => match b.clone().into_data().try_into_vec::<f32>() {
            Ok(v) => Some(v),
            Err(_) => return burn_conv2d(x, weight, bias, options),
        },
        None => None,
    };
    // The values are read in place (the module keeps its weights; no copy of them per call).
    let (ho, wo) = shape.out_hw();
    let out = crate::kernels::cpu_ops::with_host_values(&x, |xv| {
        crate::kernels::cpu_ops::with_host_values(&weight, |wv| {
            conv3x3(xv, wv, bias_vec.as_deref(), shape, tile)
        })
    })
    .flatten();
    match out {
        Some(out) => Tensor::from_data(TensorData::new(out, [n, shape.c_out, ho, wo]), &device),
        // A strided view (not expected here): burn's kernel gives the same result.
        None => burn_conv2d(x, weight, bias, options),
    }
}

// The transforms for F(4×4, 3×3) (points 0, ±1, ±2, ∞) and F(2×2, 3×3) (0, ±1, ∞). Aᵀ is padded
// to (m+2) rows with zeros so both sizes share one generic code path.
const BT6: [[f32; 6]; 6] = [
    [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
    [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
    [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
    [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
    [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
    [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
];
const G6: [[f32; 3]; 6] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];
const AT6: [[f32; 6]; 6] = [
    [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
    [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
    [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
    [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
    [0.0; 6],
    [0.0; 6],
];
const BT4: [[f32; 4]; 4] = [
    [1.0, 0.0, -1.0, 0.0],
    [0.0, 1.0, 1.0, 0.0],
    [0.0, -1.0, 1.0, 0.0],
    [0.0, 1.0, 0.0, -1.0],
];
const G4: [[f32; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];
const AT4: [[f32; 4]; 4] = [
    [1.0, 1.0, 1.0, 0.0],
    [0.0, 1.0, -1.0, -1.0],
    [0.0; 4],
    [0.0; 4],
];

/// Channels per vector step of the transforms.
const L: usize = 16;
/// Bytes for one block of transformed input and gemm output (tile rows are processed in
/// blocks of about this size, so the transient buffers stay bounded for large images).
const BLOCK_BYTES: usize = 24 << 20;
/// Bytes for the transformed weights of one block of output channels.
const WEIGHT_BYTES: usize = 48 << 20;

/// The convolution on host slices: `x` `[n, c_in, h, w]`, `weight` `[c_out, c_in, 3, 3]`,
/// `bias` `[c_out]`; output `[n, c_out, ho, wo]` (see [`Shape::out_hw`]).
pub fn conv3x3(x: &[f32], weight: &[f32], bias: Option<&[f32]>, s: Shape, tile: Tile) -> Vec<f32> {
    assert_eq!(x.len(), s.n * s.c_in * s.h * s.w, "input size");
    assert_eq!(weight.len(), s.c_out * s.c_in * 9, "weight size");
    if let Some(b) = bias {
        assert_eq!(b.len(), s.c_out, "bias size");
    }
    match tile {
        Tile::F4 => run(x, weight, bias, s, 6, &f4::KERNELS),
        Tile::F2 => run(x, weight, bias, s, 4, &f2::KERNELS),
    }
}

/// Raw pointer that may cross threads: the gemm tasks write disjoint columns of one buffer.
#[derive(Clone, Copy)]
struct SendPtr<P>(P);
// SAFETY: used only for disjoint writes / shared reads inside one scoped parallel loop.
unsafe impl<P> Send for SendPtr<P> {}
unsafe impl<P> Sync for SendPtr<P> {}

/// Whether a convolution with these options and weight dims `[c_out, c_in, kh, kw]` is a 3×3,
/// stride-1, undilated, ungrouped one (what both fast paths compute).
pub(crate) fn is_3x3_stride_1(weight_dims: [usize; 4], options: &ConvOptions<2>) -> bool {
    weight_dims[2] == 3
        && weight_dims[3] == 3
        && options.stride == [1, 1]
        && options.dilation == [1, 1]
        && options.groups == 1
}

/// The convolution with input tiles of `t`×`t` (`t` = m + 2) and that size's kernels.
fn run(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    s: Shape,
    t: usize,
    k: &Kernels,
) -> Vec<f32> {
    let m = t - 2;
    let tt = t * t;
    let Shape {
        n,
        c_in,
        c_out,
        h,
        w,
        ..
    } = s;
    let (ho, wo) = s.out_hw();
    let (th, tw) = (ho.div_ceil(m), wo.div_ceil(m));
    if n * c_out * ho * wo == 0 {
        return vec![0.0; n * c_out * ho * wo];
    }
    // The input channels-last, so that one tile position's channels are contiguous.
    let xt = to_channels_last(x, c_in, h * w);
    // The output channels-last, rows padded to whole tiles: [n, th·m, wo, c_out].
    let hp = th * m;
    let mut yt = vec![0f32; n * hp * wo * c_out];
    let row_len = m * wo * c_out;

    // Blocks of output channels (the transformed weights of one block within WEIGHT_BYTES) and
    // of tile rows (transformed input and gemm output within BLOCK_BYTES).
    let kb = (WEIGHT_BYTES / (tt * c_in * 4)).clamp(L, c_out.next_multiple_of(L)) / L * L;
    let kb = kb.min(c_out);
    let tile_rows = n * th;
    let per_row = tw * tt * (c_in + kb) * 4;
    let rows_per_block = (BLOCK_BYTES / per_row).clamp(1, tile_rows);
    let mut u = vec![0f32; c_in * tt * kb];
    let mut v = vec![0f32; rows_per_block * tw * tt * c_in];
    let mut mm = vec![0f32; rows_per_block * tw * tt * kb];

    let geo = Geometry {
        h,
        w,
        c_in,
        pad_top: s.pad[0].0,
        pad_left: s.pad[1].0,
        th,
        tw,
    };
    for k0 in (0..c_out).step_by(kb) {
        let kn = kb.min(c_out - k0);
        // U for output channels k0..k0+kn: [c_in][ξ][kn].
        let u = &mut u[..c_in * tt * kn];
        // Tasks of 16 input channels: their filters for one output channel are contiguous.
        for_chunks(u, L * tt * kn, |i, chunk| {
            (k.weight)(weight, c_in, i * L, k0, kn, chunk)
        });
        let bias = bias.map(|b| &b[k0..k0 + kn]);
        for r0 in (0..tile_rows).step_by(rows_per_block) {
            let rows = rows_per_block.min(tile_rows - r0);
            let tiles = rows * tw;
            // V for these tile rows: [tile][ξ][c_in].
            let v = &mut v[..tiles * tt * c_in];
            for_chunks(v, tw * tt * c_in, |i, chunk| {
                (k.input_row)(&xt, &geo, r0 + i, chunk)
            });
            // M[ξ] = V[ξ] · U[ξ] for every ξ: [tile][ξ][kn].
            let mm = &mut mm[..tiles * tt * kn];
            let (vp, up, mp) = (
                SendPtr(v.as_ptr()),
                SendPtr(u.as_ptr()),
                SendPtr(mm.as_mut_ptr()),
            );
            for_each_index(tt, move |xi| {
                let (vp, up, mp) = (vp, up, mp);
                // SAFETY: gemm ξ reads V's columns ξ·c_in.. of each tile row (row stride
                // tt·c_in), U's columns ξ·kn.. of each input channel (row stride tt·kn) and
                // writes M's columns ξ·kn.. of each tile row (row stride tt·kn): within the
                // buffers, and the tasks' writes are disjoint.
                unsafe {
                    gemm::gemm(
                        tiles,
                        kn,
                        c_in,
                        mp.0.add(xi * kn),
                        1,
                        (tt * kn) as isize,
                        false,
                        vp.0.add(xi * c_in),
                        1,
                        (tt * c_in) as isize,
                        up.0.add(xi * kn),
                        1,
                        (tt * kn) as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            });
            // Output tiles for these rows, into columns k0..k0+kn of yt.
            let mm: &[f32] = mm;
            let out = &mut yt[r0 * row_len..(r0 + rows) * row_len];
            for_chunks(out, row_len, |i, chunk| {
                let src = &mm[i * tw * tt * kn..][..tw * tt * kn];
                (k.output_row)(src, wo, c_out, k0, kn, bias, chunk)
            });
        }
    }
    from_channels_last(&yt, n, c_out, hp, ho, wo)
}

/// Where the tiles lie in the input.
struct Geometry {
    h: usize,
    w: usize,
    c_in: usize,
    pad_top: usize,
    pad_left: usize,
    th: usize,
    tw: usize,
}

/// `[n, c, hw]` → `[n, hw, c]`.
fn to_channels_last(x: &[f32], c: usize, hw: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    if out.is_empty() {
        return out;
    }
    // Per image, tasks of 64 positions × all channels.
    const P: usize = 64;
    for (src, dst) in x.chunks(c * hw).zip(out.chunks_mut(c * hw)) {
        for_chunks(dst, P * c, |i, chunk| {
            let (p0, np) = (i * P, chunk.len() / c);
            for ch in 0..c {
                let row = &src[ch * hw + p0..][..np];
                for (p, &val) in row.iter().enumerate() {
                    chunk[p * c + ch] = val;
                }
            }
        });
    }
    out
}

/// `[n, hp, wo, c]` → `[n, c, ho, wo]` (the first `ho` of `hp` rows).
fn from_channels_last(y: &[f32], n: usize, c: usize, hp: usize, ho: usize, wo: usize) -> Vec<f32> {
    let mut out = vec![0f32; n * c * ho * wo];
    // Tasks of one image's group of `cb` channels (their planes are contiguous in the output).
    let cb = [16, 8, 4, 2, 1]
        .into_iter()
        .find(|&b| c.is_multiple_of(b))
        .unwrap_or(1);
    let plane = ho * wo;
    for_chunks(&mut out, cb * plane, |i, chunk| {
        let (img, c0) = (i / (c / cb), (i % (c / cb)) * cb);
        let src = &y[img * hp * wo * c..];
        for p in 0..plane {
            let px = &src[p * c + c0..][..cb];
            for (j, &val) in px.iter().enumerate() {
                chunk[j * plane + p] = val;
            }
        }
    });
    out
}

/// `(gemm results, wo, c_out, k0, kn, bias, out)`: see `output_row_generic`.
type OutputRowFn = fn(&[f32], usize, usize, usize, usize, Option<&[f32]>, &mut [f32]);

/// The transforms' per-row kernels for one tile size, compiled with the tables as constants
/// (and for AVX-512 / AVX2 where the CPU has them).
struct Kernels {
    /// One tile row (image `r / th`, row `r % th`) of transformed input tiles: `[tw][ξ][c_in]`.
    input_row: fn(&[f32], &Geometry, usize, &mut [f32]),
    /// Transformed weights of a block of input channels for a block of output channels.
    weight: fn(&[f32], usize, usize, usize, usize, &mut [f32]),
    /// One tile row of output tiles (bias added).
    output_row: OutputRowFn,
}

macro_rules! kernels {
    ($name:ident, $t:literal, $bt:ident, $g:ident, $at:ident) => {
        mod $name {
            use super::*;
            crate::kernels::cpu_ops::simd_fn!(
                fn input_row(xt: &[f32], geo: &Geometry, r: usize, out: &mut [f32]) {
                    input_row_generic::<$t>(xt, geo, r, &$bt, out)
                }
            );
            crate::kernels::cpu_ops::simd_fn!(
                fn weight(
                    w: &[f32],
                    c_in: usize,
                    c0: usize,
                    k0: usize,
                    kn: usize,
                    out: &mut [f32],
                ) {
                    weight_transform::<$t>(w, c_in, c0, k0, kn, &$g, out)
                }
            );
            crate::kernels::cpu_ops::simd_fn!(
                fn output_row(
                    src: &[f32],
                    wo: usize,
                    c_out: usize,
                    k0: usize,
                    kn: usize,
                    bias: Option<&[f32]>,
                    out: &mut [f32],
                ) {
                    output_row_generic::<$t>(src, wo, c_out, k0, kn, bias, &$at, out)
                }
            );
            pub(super) const KERNELS: Kernels = Kernels {
                input_row,
                weight,
                output_row,
            };
        }
    };
}
kernels!(f4, 6, BT6, G6, AT6);
kernels!(f2, 4, BT4, G4, AT4);

/// `M · d` for a small constant matrix `M` (`R×K`) and `d` (`K×C` values of `L` lanes each):
/// row `r` is `Σ_k M[r][k] · d[k]`; zero coefficients are skipped (constants once inlined).
#[inline(always)]
fn times_left<const R: usize, const K: usize, const C: usize>(
    m: &[[f32; K]; R],
    d: &[[[f32; L]; C]; K],
) -> [[[f32; L]; C]; R] {
    let mut out = [[[0f32; L]; C]; R];
    for (orow, mrow) in out.iter_mut().zip(m) {
        for (&cf, drow) in mrow.iter().zip(d) {
            if cf == 0.0 {
                continue;
            }
            for (ov, dv) in orow.iter_mut().zip(drow) {
                for l in 0..L {
                    ov[l] += cf * dv[l];
                }
            }
        }
    }
    out
}

/// `start + Σ_j row[j] · v[j]` over `L` lanes (one entry of `t · Mᵀ`, `row` a row of `M`).
#[inline(always)]
fn dot_lanes<const C: usize>(start: [f32; L], row: &[f32; C], v: &[[f32; L]; C]) -> [f32; L] {
    let mut acc = start;
    for (&cf, vv) in row.iter().zip(v) {
        if cf == 0.0 {
            continue;
        }
        for l in 0..L {
            acc[l] += cf * vv[l];
        }
    }
    acc
}

/// `dst[..n] = src[..n]` for `n ≤ L`: one fixed-size (vector) copy when `n == L`, where a
/// variable-length copy would be a call to `memmove` per 16 values.
#[inline(always)]
fn copy_lanes(dst: &mut [f32], src: &[f32], n: usize) {
    if n == L {
        let d: &mut [f32; L] = (&mut dst[..L]).try_into().expect("L values");
        *d = src[..L].try_into().expect("L values");
    } else {
        dst[..n].copy_from_slice(&src[..n]);
    }
}

#[inline(always)]
fn input_row_generic<const T: usize>(
    xt: &[f32],
    geo: &Geometry,
    r: usize,
    bt: &[[f32; T]; T],
    out: &mut [f32],
) {
    let m = T - 2;
    let tt = T * T;
    let c_in = geo.c_in;
    let (img, ty) = (r / geo.th, r % geo.th);
    let image = &xt[img * geo.h * geo.w * c_in..][..geo.h * geo.w * c_in];
    for tx in 0..geo.tw {
        // Tile origin in the input (may lie in the padding).
        let y0 = (ty * m) as isize - geo.pad_top as isize;
        let x0 = (tx * m) as isize - geo.pad_left as isize;
        let dst = &mut out[tx * tt * c_in..][..tt * c_in];
        for c0 in (0..c_in).step_by(L) {
            let nl = L.min(c_in - c0);
            let mut d = [[[0f32; L]; T]; T];
            for (i, drow) in d.iter_mut().enumerate() {
                let y = y0 + i as isize;
                if y < 0 || y >= geo.h as isize {
                    continue;
                }
                for (j, dv) in drow.iter_mut().enumerate() {
                    let xx = x0 + j as isize;
                    if xx < 0 || xx >= geo.w as isize {
                        continue;
                    }
                    let at = (y as usize * geo.w + xx as usize) * c_in + c0;
                    copy_lanes(dv, &image[at..], nl);
                }
            }
            // t = Bᵀ d, then V = t B.
            let t = times_left(bt, &d);
            for (a, trow) in t.iter().enumerate() {
                for (b, brow) in bt.iter().enumerate() {
                    let acc = dot_lanes([0.0; L], brow, trow);
                    copy_lanes(&mut dst[(a * T + b) * c_in + c0..], &acc, nl);
                }
            }
        }
    }
}

/// Transformed weights of input channels `c0..` (as many as `out` holds) for output channels
/// `k0..k0+kn`: `out` `[c][ξ][kn]`. Output channels go in the vector lanes; the loop over input
/// channels is innermost, so the filters read for one block of lanes stay in cache.
#[inline(always)]
fn weight_transform<const T: usize>(
    weight: &[f32],
    c_in: usize,
    c0: usize,
    k0: usize,
    kn: usize,
    g: &[[f32; 3]; T],
    out: &mut [f32],
) {
    let per_c = T * T * kn;
    let cn = out.len() / per_c;
    for kc in (0..kn).step_by(L) {
        let nl = L.min(kn - kc);
        for c in 0..cn {
            let out = &mut out[c * per_c..][..per_c];
            // The 3×3 filters of output channels k0+kc.. (input channel c0+c), lanes = channels.
            let mut f = [[[0f32; L]; 3]; 3];
            for l in 0..nl {
                let src = &weight[((k0 + kc + l) * c_in + c0 + c) * 9..][..9];
                for i in 0..3 {
                    for j in 0..3 {
                        f[i][j][l] = src[i * 3 + j];
                    }
                }
            }
            // t = G f (T×3), then U = t Gᵀ (T×T).
            let t = times_left(g, &f);
            for (a, trow) in t.iter().enumerate() {
                for (b, grow) in g.iter().enumerate() {
                    let acc = dot_lanes([0.0; L], grow, trow);
                    copy_lanes(&mut out[(a * T + b) * kn + kc..], &acc, nl);
                }
            }
        }
    }
}

/// One tile row of output tiles from the gemm results `src` `[tw][ξ][kn]`, into columns
/// `k0..k0+kn` of `out` (`[m rows][wo][c_out]`), bias added.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn output_row_generic<const T: usize>(
    src: &[f32],
    wo: usize,
    c_out: usize,
    k0: usize,
    kn: usize,
    bias: Option<&[f32]>,
    at: &[[f32; T]; T],
    out: &mut [f32],
) {
    let m = T - 2;
    let tt = T * T;
    let tw = wo.div_ceil(m);
    for tx in 0..tw {
        let tile = &src[tx * tt * kn..][..tt * kn];
        for kc in (0..kn).step_by(L) {
            let nl = L.min(kn - kc);
            let mut mt = [[[0f32; L]; T]; T];
            for (a, row) in mt.iter_mut().enumerate() {
                for (b, mv) in row.iter_mut().enumerate() {
                    copy_lanes(mv, &tile[(a * T + b) * kn + kc..], nl);
                }
            }
            let mut b0 = [0f32; L];
            if let Some(bias) = bias {
                copy_lanes(&mut b0, &bias[kc..], nl);
            }
            // t = Aᵀ M (m×T; Aᵀ's padding rows are zero), then Y = t A (m×m), plus the bias.
            let t = times_left(at, &mt);
            for (i, trow) in t.iter().enumerate().take(m) {
                for (j, arow) in at.iter().enumerate().take(m) {
                    let ox = tx * m + j;
                    if ox >= wo {
                        break;
                    }
                    let acc = dot_lanes(b0, arow, trow);
                    copy_lanes(&mut out[(i * wo + ox) * c_out + k0 + kc..], &acc, nl);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Pcg32;
    use burn::tensor::Device;

    /// The convolution by burn on the CPU device, and by Winograd with `tile`.
    fn both(s: Shape, tile: Tile, bias: bool) -> (Vec<f32>, Vec<f32>) {
        let mut rng = Pcg32::new(11);
        let x = rng.normals(s.n * s.c_in * s.h * s.w);
        let w: Vec<f32> = rng
            .normals(s.c_out * s.c_in * 9)
            .into_iter()
            .map(|v| v / (3.0 * (s.c_in as f32).sqrt()))
            .collect();
        let b = bias.then(|| rng.normals(s.c_out));
        let device = Device::flex();
        let xt =
            Tensor::<4>::from_data(TensorData::new(x.clone(), [s.n, s.c_in, s.h, s.w]), &device);
        let wt =
            Tensor::<4>::from_data(TensorData::new(w.clone(), [s.c_out, s.c_in, 3, 3]), &device);
        let bt = b
            .clone()
            .map(|b| Tensor::<1>::from_data(TensorData::new(b, [s.c_out]), &device));
        let options = ConvOptions::new_with_padding([1, 1], s.pad, [1, 1], 1);
        let reference = burn_conv2d(xt, wt, bt, options)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        let ours = conv3x3(&x, &w, b.as_deref(), s, tile);
        (reference, ours)
    }

    /// Within 2e-5 of the reference's largest value (at least 1).
    fn assert_close(reference: &[f32], ours: &[f32], what: &str) {
        assert_eq!(reference.len(), ours.len());
        let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = reference
            .iter()
            .zip(ours)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(
            diff <= 2e-5 * scale.max(1.0),
            "{what}: max abs diff {diff} (largest {scale})"
        );
    }

    #[test]
    fn matches_burn_for_both_tile_sizes_ragged_shapes_and_paddings() {
        // Sizes not multiples of the tile, channels not multiples of 16, asymmetric padding
        // (the VAE's downsampler pads (0, 1)), no padding, batch 2, with and without bias.
        let shapes = [
            (2, 19, 21, 9, 11, [(1, 1), (1, 1)]),
            (1, 16, 32, 8, 8, [(1, 1), (1, 1)]),
            (1, 5, 3, 7, 6, [(0, 1), (0, 1)]),
            (2, 33, 17, 6, 13, [(0, 0), (0, 0)]),
            (1, 40, 24, 3, 3, [(1, 1), (1, 1)]),
        ];
        for (n, c_in, c_out, h, w, pad) in shapes {
            let s = Shape {
                n,
                c_in,
                c_out,
                h,
                w,
                pad,
            };
            for tile in [Tile::F2, Tile::F4] {
                for bias in [false, true] {
                    let (reference, ours) = both(s, tile, bias);
                    assert_close(&reference, &ours, &format!("{s:?} {tile:?} bias {bias}"));
                }
            }
        }
    }

    #[test]
    fn blocks_of_channels_and_tile_rows_give_the_same_result() {
        // Wide enough that the weights are transformed in several blocks of output channels
        // (WEIGHT_BYTES) and the tiles run in several blocks of rows (BLOCK_BYTES).
        let s = Shape {
            n: 1,
            c_in: 512,
            c_out: 720,
            h: 60,
            w: 70,
            pad: [(1, 1), (1, 1)],
        };
        let per_k = 36 * s.c_in * 4;
        assert!(s.c_out * per_k > WEIGHT_BYTES, "one block of channels");
        let tw = s.w.div_ceil(4);
        let kb = WEIGHT_BYTES / per_k / L * L;
        assert!(
            15 * tw * 36 * (s.c_in + kb) * 4 > BLOCK_BYTES,
            "one block of rows"
        );
        let (reference, ours) = both(s, Tile::F4, true);
        assert_close(&reference, &ours, "blocks");
    }

    #[test]
    fn choose_skips_narrow_and_small_convolutions() {
        let s = |n, c_in, c_out, hw| Shape {
            n,
            c_in,
            c_out,
            h: hw,
            w: hw,
            pad: [(1, 1), (1, 1)],
        };
        assert_eq!(choose(&s(2, 4, 320, 64)), None);
        assert_eq!(choose(&s(2, 320, 4, 64)), None);
        assert_eq!(choose(&s(2, 320, 320, 64)), Some(Tile::F4));
        assert_eq!(choose(&s(1, 8, 8, 0)), None);
    }
}
