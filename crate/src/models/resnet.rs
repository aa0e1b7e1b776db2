//! diffusers `resnet.py`: `ResnetBlock2D` (default time-embedding norm), `Downsample2D`,
//! `Upsample2D`.

use burn::tensor::Tensor;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};

use crate::error::Result;
use crate::models::banded::Bands;
use crate::models::loader::Loader;
use crate::models::nn::{Activation, Conv2d, GroupNorm, Linear};

/// Shared settings of the resnets in one model.
#[derive(Debug, Clone, Copy)]
pub struct ResnetSettings {
    pub groups: usize,
    pub eps: f64,
    pub act: Activation,
    /// `temb_channels`; `None` in the VAE.
    pub temb: Option<usize>,
    pub output_scale_factor: f64,
}

/// `ResnetBlock2D`.
#[derive(Debug, Clone)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    act: Activation,
    output_scale_factor: f64,
}

impl ResnetBlock2D {
    pub fn load(vb: &Loader, c_in: usize, c_out: usize, s: &ResnetSettings) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::load(&vb.pp("norm1"), s.groups, c_in, s.eps)?,
            conv1: Conv2d::load(&vb.pp("conv1"), c_in, c_out, 3, 1, (1, 1), true)?,
            time_emb_proj: match s.temb {
                Some(t) => Some(Linear::load(&vb.pp("time_emb_proj"), t, c_out, true)?),
                None => None,
            },
            norm2: GroupNorm::load(&vb.pp("norm2"), s.groups, c_out, s.eps)?,
            conv2: Conv2d::load(&vb.pp("conv2"), c_out, c_out, 3, 1, (1, 1), true)?,
            conv_shortcut: if c_in != c_out {
                Some(Conv2d::load(
                    &vb.pp("conv_shortcut"),
                    c_in,
                    c_out,
                    1,
                    1,
                    (0, 0),
                    true,
                )?)
            } else {
                None
            },
            act: s.act,
            output_scale_factor: s.output_scale_factor,
        })
    }

    pub fn forward(&self, x: Tensor<4>, temb: Option<&Tensor<2>>) -> Tensor<4> {
        let mut h = self
            .conv1
            .forward(self.norm1.forward_act(x.clone(), self.act));
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            let t = proj.forward(self.act.forward(temb.clone()));
            let [b, c] = t.dims();
            h = h + t.reshape([b, c, 1, 1]);
        }
        let h = self.conv2.forward(self.norm2.forward_act(h, self.act));
        let x = match &self.conv_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        let out = x + h;
        if self.output_scale_factor != 1.0 {
            out / self.output_scale_factor
        } else {
            out
        }
    }
}

impl ResnetBlock2D {
    /// [`forward`](Self::forward) on row bands (no time embedding: the VAE's resnets).
    pub fn forward_banded(&self, x: Bands) -> Bands {
        let h = x
            .clone()
            .group_norm(&self.norm1)
            .act(self.act)
            .conv(&self.conv1);
        let h = h.group_norm(&self.norm2).act(self.act).conv(&self.conv2);
        let x = match &self.conv_shortcut {
            Some(conv) => x.conv(conv),
            None => x,
        };
        let out = x.align(&h).add(h);
        if self.output_scale_factor != 1.0 {
            let s = self.output_scale_factor;
            out.map(|t| t / s)
        } else {
            out
        }
    }
}

/// `Downsample2D` with a convolution: stride 2, kernel 3. `padding` 1 (UNet) or 0 (VAE
/// encoder, which pads right/bottom by one instead).
#[derive(Debug, Clone)]
pub struct Downsample2D {
    conv: Conv2d,
}

impl Downsample2D {
    pub fn load(vb: &Loader, channels: usize, padding: usize) -> Result<Self> {
        let pad = if padding == 0 {
            (0, 1)
        } else {
            (padding, padding)
        };
        Ok(Self {
            conv: Conv2d::load(&vb.pp("conv"), channels, channels, 3, 2, pad, true)?,
        })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.conv.forward(x)
    }
}

/// `Upsample2D` with a convolution: nearest ×2 (or to `size`), then a 3×3 convolution.
#[derive(Debug, Clone)]
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    pub fn load(vb: &Loader, channels: usize) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::load(&vb.pp("conv"), channels, channels, 3, 1, (1, 1), true)?,
        })
    }

    pub fn forward(&self, x: Tensor<4>, size: Option<[usize; 2]>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let size = size.unwrap_or([2 * h, 2 * w]);
        let x = interpolate(
            x,
            InterpolateOptions::new(InterpolateMode::Nearest).with_output_size(size),
        );
        self.conv.forward(x)
    }

    /// Nearest ×2 and the convolution, on row bands.
    pub fn forward_banded(&self, x: Bands) -> Bands {
        x.upsample_nearest2().conv(&self.conv)
    }
}
