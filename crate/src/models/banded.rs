//! Row-banded execution of convolutional layers, so that no single buffer exceeds a byte budget.
//!
//! SD1.5's VAE decoder at 512×512 holds `[1, 256, 512, 512]` f32 activations: 256 MiB in one
//! buffer, above WebGPU's default `maxStorageBufferBindingSize` (128 MiB) — the device refuses
//! it. [`Bands`] keeps such a tensor as horizontal bands, each its own buffer, and computes the
//! same result exactly (not tiled with blending, as diffusers' `enable_tiling` does):
//! - a 3×3 convolution (stride 1, padding 1) sees one halo row from each neighbouring band, and
//!   the rows computed from the halo are dropped;
//! - GroupNorm takes its statistics over all bands (two passes: mean, then variance) and then
//!   normalises each band;
//! - element-wise operations, 1×1 convolutions and nearest upsampling work band by band.
//!
//! The whole tensor still exists (as bands), so total memory is about what the plain path
//! needs; what changes is the largest single buffer.

use burn::tensor::Tensor;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};

use crate::kernels::conv::conv2d;

use crate::models::nn::{Activation, Conv2d, GroupNorm, to_f32};

/// A `[B, C, H, W]` tensor as bands of rows (dimension 2), top to bottom.
#[derive(Debug, Clone)]
pub struct Bands {
    bands: Vec<Tensor<4>>,
    /// Largest band, in bytes (f32), that operations may produce.
    max_bytes: usize,
}

impl Bands {
    /// Split `x` into bands of at most `max_bytes` each (at least one row per band).
    pub fn split(x: Tensor<4>, max_bytes: usize) -> Self {
        Self {
            bands: vec![x],
            max_bytes,
        }
        .fit(0, 0)
    }

    /// Split bands further so that a band of `channels` channels (0: the bands' own) and the
    /// bands' width, grown by `halo` rows, stays within the budget.
    fn fit(self, channels: usize, halo: usize) -> Self {
        let max_bytes = self.max_bytes;
        let mut out = Vec::with_capacity(self.bands.len());
        for band in self.bands {
            let [b, c, h, w] = band.dims();
            let row = b * c.max(channels) * w * 4;
            let rows = (max_bytes / row.max(1)).saturating_sub(halo).max(1);
            if h <= rows {
                out.push(band);
                continue;
            }
            let mut start = 0;
            while start < h {
                let n = rows.min(h - start);
                out.push(band.clone().narrow(2, start, n));
                start += n;
            }
        }
        Self {
            bands: out,
            max_bytes,
        }
    }

    pub fn len(&self) -> usize {
        self.bands.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bands.is_empty()
    }

    /// The bands put back together (one buffer: only for results within the budget).
    pub fn concat(self) -> Tensor<4> {
        Tensor::cat(self.bands, 2)
    }

    /// Apply a row-local operation (element-wise, 1×1 convolution) to every band.
    pub fn map(self, f: impl Fn(Tensor<4>) -> Tensor<4>) -> Self {
        Self {
            bands: self.bands.into_iter().map(f).collect(),
            max_bytes: self.max_bytes,
        }
    }

    /// Row ranges of the bands.
    fn bounds(&self) -> Vec<(usize, usize)> {
        let mut start = 0;
        self.bands
            .iter()
            .map(|x| {
                let h = x.dims()[2];
                start += h;
                (start - h, start)
            })
            .collect()
    }

    /// The same tensor, split at `other`'s band boundaries (both cover the same rows).
    pub fn align(self, other: &Bands) -> Self {
        let want = other.bounds();
        let have = self.bounds();
        if want == have {
            return self;
        }
        let mut out = Vec::with_capacity(want.len());
        for &(a, b) in &want {
            let mut parts = Vec::new();
            for (x, &(s, e)) in self.bands.iter().zip(&have) {
                let (lo, hi) = (a.max(s), b.min(e));
                if lo < hi {
                    parts.push(x.clone().narrow(2, lo - s, hi - lo));
                }
            }
            out.push(if parts.len() == 1 {
                parts.pop().expect("one part")
            } else {
                Tensor::cat(parts, 2)
            });
        }
        Self {
            bands: out,
            max_bytes: self.max_bytes,
        }
    }

    /// `self + other`, band by band (both split the same way: see [`Bands::align`]).
    pub fn add(self, other: Bands) -> Self {
        assert_eq!(self.bounds(), other.bounds(), "bands split alike");
        Self {
            bands: self
                .bands
                .into_iter()
                .zip(other.bands)
                .map(|(a, b)| a + b)
                .collect(),
            max_bytes: self.max_bytes,
        }
    }

    pub fn act(self, act: Activation) -> Self {
        self.map(|x| act.forward(x))
    }

    /// A convolution: 1×1 band by band; 3×3 (stride 1, padding 1) with one halo row from each
    /// neighbour.
    pub fn conv(self, conv: &Conv2d) -> Self {
        let [c_out, _, k, _] = conv.weight.dims();
        let pad = conv.options.padding[0];
        // A 3×3 convolution reads (and computes) one halo row above and below each band: the
        // band plus its halo must fit, in and out.
        let halo = if k == 1 { 0 } else { 2 };
        let this = self.fit(c_out, halo);
        // The kernel once for all bands (a quantized one is dequantized once).
        let weight = conv.weight.get();
        let forward = |x: Tensor<4>| {
            conv2d(
                x,
                weight.clone(),
                conv.bias.clone(),
                conv.options.clone(),
                conv.kernels,
            )
        };
        if k == 1 && pad == (0, 0) {
            return this.map(forward);
        }
        assert!(
            k == 3 && pad == (1, 1) && conv.options.stride == [1, 1],
            "banded convolutions are 1x1, or 3x3 with stride 1 and padding 1"
        );
        let n = this.bands.len();
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let band = this.bands[i].clone();
            let h = band.dims()[2];
            let mut parts = Vec::with_capacity(3);
            let top = if i > 0 {
                let prev = &this.bands[i - 1];
                let hp = prev.dims()[2];
                parts.push(prev.clone().narrow(2, hp - 1, 1));
                1
            } else {
                0
            };
            parts.push(band);
            let bottom = i + 1 < n;
            if bottom {
                parts.push(this.bands[i + 1].clone().narrow(2, 0, 1));
            }
            let ext = if parts.len() == 1 {
                parts.pop().expect("one part")
            } else {
                Tensor::cat(parts, 2)
            };
            let y = forward(ext);
            out.push(if top == 0 && !bottom {
                y
            } else {
                y.narrow(2, top, h)
            });
        }
        Self {
            bands: out,
            max_bytes: this.max_bytes,
        }
    }

    /// GroupNorm with statistics over all bands (biased variance, as `torch.nn.GroupNorm`),
    /// computed in f32 whatever the compute dtype (as `nn::GroupNorm`: sums of squares
    /// overflow f16).
    pub fn group_norm(self, gn: &GroupNorm) -> Self {
        let g = gn.groups;
        let [b, c, _, w] = self.bands[0].dims();
        let rows: usize = self.bands.iter().map(|x| x.dims()[2]).sum();
        let count = ((c / g) * rows * w) as f64;
        let grouped = |x: &Tensor<4>| {
            let h = x.dims()[2];
            to_f32(x.clone().reshape([b, g, (c / g) * h * w])).0
        };
        let mut sum: Option<Tensor<3>> = None;
        for x in &self.bands {
            let s = crate::models::nn::sum_last(grouped(x));
            sum = Some(match sum {
                Some(acc) => acc + s,
                None => s,
            });
        }
        let mean = sum.expect("at least one band") / count;
        let mut sq: Option<Tensor<3>> = None;
        for x in &self.bands {
            let d = grouped(x) - mean.clone();
            let s = crate::models::nn::sum_last(d.clone() * d);
            sq = Some(match sq {
                Some(acc) => acc + s,
                None => s,
            });
        }
        let var = sq.expect("at least one band") / count;
        let inv = (var + gn.eps).sqrt().recip();
        let weight = gn.weight.clone().reshape([1, c, 1, 1]);
        let bias = gn.bias.clone().reshape([1, c, 1, 1]);
        self.map(|x| {
            let h = x.dims()[2];
            let dtype = x.dtype();
            let xg = (grouped(&x) - mean.clone()) * inv.clone();
            xg.reshape([b, c, h, w]).cast(dtype) * weight.clone() + bias.clone()
        })
    }

    /// Nearest-neighbour upsampling by 2 in both directions, band by band.
    pub fn upsample_nearest2(self) -> Self {
        let this = self.fit(0, 0);
        // Each band doubles: split first so that the doubled bands stay within the budget.
        let halved = Self {
            max_bytes: this.max_bytes / 4,
            bands: this.bands,
        }
        .fit(0, 0);
        Self {
            bands: halved
                .bands
                .into_iter()
                .map(|x| {
                    let [_, _, h, w] = x.dims();
                    interpolate(
                        x,
                        InterpolateOptions::new(InterpolateMode::Nearest)
                            .with_output_size([2 * h, 2 * w]),
                    )
                })
                .collect(),
            max_bytes: this.max_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn ramp(shape: [usize; 4], device: &Device) -> Tensor<4> {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| i as f32).collect();
        Tensor::from_data(TensorData::new(v, shape), device)
    }

    fn values(x: Tensor<4>) -> Vec<f32> {
        x.into_data().try_into_vec::<f32>().unwrap()
    }

    /// Bands sized for a 3×3 convolution leave room for its two halo rows.
    #[test]
    fn bands_leave_room_for_the_halo() {
        let device = Device::flex();
        let x = ramp([1, 2, 10, 3], &device);
        let row = 2 * 3 * 4;
        let plain = Bands::split(x.clone(), 4 * row);
        assert!(plain.bands.iter().all(|b| b.dims()[2] <= 4));
        let haloed = plain.fit(0, 2);
        assert!(haloed.bands.iter().all(|b| b.dims()[2] + 2 <= 4));
        assert_eq!(values(haloed.concat()), values(x));
    }

    /// Bands split differently (as after a layer that widens the channels) are re-aligned
    /// row for row, and adding them gives the plain sum.
    #[test]
    fn differently_split_bands_align_and_add() {
        let device = Device::flex();
        let x = ramp([1, 2, 10, 3], &device);
        let row = 2 * 3 * 4; // bytes per row at 2 channels
        let coarse = Bands::split(x.clone(), 4 * row); // bands of 4, 4, 2 rows
        let fine = Bands::split(x.clone(), 3 * row); // bands of 3, 3, 3, 1 rows
        assert_eq!(coarse.len(), 3);
        assert_eq!(fine.len(), 4);
        let sum = coarse.align(&fine).add(fine).concat();
        assert_eq!(values(sum), values(x.clone() * 2.0));
    }
}
