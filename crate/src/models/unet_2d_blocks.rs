//! diffusers `unet_2d_blocks.py`: the down, mid and up blocks of the UNet
//! (`CrossAttnDownBlock2D`, `DownBlock2D`, `UNetMidBlock2DCrossAttn`, `UpBlock2D`,
//! `CrossAttnUpBlock2D`) and of the VAE (`DownEncoderBlock2D`, `UNetMidBlock2D`,
//! `UpDecoderBlock2D`).

use burn::tensor::Tensor;

use super::attention::{Attention, Transformer2DModel, TransformerSettings, UNetContext};
use super::resnet::{Downsample2D, ResnetBlock2D, ResnetSettings, Upsample2D};
use crate::error::Result;
use crate::kernels::attention::AttentionKernel;
use crate::models::loader::Loader;

/// A down block: resnets, each optionally followed by a transformer, then an optional
/// downsampler. Covers `CrossAttnDownBlock2D`, `DownBlock2D` and `DownEncoderBlock2D`.
#[derive(Debug, Clone)]
pub struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    downsampler: Option<Downsample2D>,
}

/// How one down block is built.
pub struct DownSpec<'a> {
    pub c_in: usize,
    pub c_out: usize,
    pub layers: usize,
    pub resnet: &'a ResnetSettings,
    pub transformer: Option<&'a TransformerSettings>,
    /// `Some(padding)` adds a downsampler.
    pub downsample_padding: Option<usize>,
}

impl DownBlock {
    pub fn load(vb: &Loader, spec: &DownSpec) -> Result<Self> {
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for j in 0..spec.layers {
            let c_in = if j == 0 { spec.c_in } else { spec.c_out };
            resnets.push(ResnetBlock2D::load(
                &vb.pp("resnets").pp(j),
                c_in,
                spec.c_out,
                spec.resnet,
            )?);
            if let Some(t) = spec.transformer {
                attentions.push(Transformer2DModel::load(
                    &vb.pp("attentions").pp(j),
                    spec.c_out,
                    t,
                )?);
            }
        }
        let downsampler = match spec.downsample_padding {
            Some(p) => Some(Downsample2D::load(&vb.pp("downsamplers.0"), spec.c_out, p)?),
            None => None,
        };
        Ok(Self {
            resnets,
            attentions,
            downsampler,
        })
    }

    /// Returns the output and pushes every intermediate state (for the up path's skips).
    pub fn forward(
        &self,
        mut x: Tensor<4>,
        temb: Option<&Tensor<2>>,
        context: Option<&UNetContext>,
        states: &mut Vec<Tensor<4>>,
    ) -> Tensor<4> {
        for (j, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(x, temb);
            if let (Some(attn), Some(ctx)) = (self.attentions.get(j), context) {
                x = attn.forward(x, ctx);
            }
            states.push(x.clone());
        }
        if let Some(down) = &self.downsampler {
            x = down.forward(x);
            states.push(x.clone());
        }
        x
    }
}

/// The attention inside a mid block.
#[derive(Debug, Clone)]
enum MidAttention {
    /// UNet: a `Transformer2DModel` with cross-attention.
    Transformer(Transformer2DModel),
    /// VAE: single-head spatial self-attention.
    Spatial(Attention),
}

/// `UNetMidBlock2DCrossAttn` / `UNetMidBlock2D`: resnet, (attention, resnet)×layers.
#[derive(Debug, Clone)]
pub struct MidBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<MidAttention>,
}

impl MidBlock {
    /// The UNet's mid block.
    pub fn load_cross_attn(
        vb: &Loader,
        channels: usize,
        resnet: &ResnetSettings,
        transformer: &TransformerSettings,
    ) -> Result<Self> {
        let resnets = (0..2)
            .map(|i| ResnetBlock2D::load(&vb.pp("resnets").pp(i), channels, channels, resnet))
            .collect::<Result<_>>()?;
        let attentions = vec![MidAttention::Transformer(Transformer2DModel::load(
            &vb.pp("attentions.0"),
            channels,
            transformer,
        )?)];
        Ok(Self {
            resnets,
            attentions,
        })
    }

    /// The VAE's mid block (`add_attention` false drops the attention).
    pub fn load_vae(
        vb: &Loader,
        channels: usize,
        resnet: &ResnetSettings,
        add_attention: bool,
        kernel: AttentionKernel,
    ) -> Result<Self> {
        let resnets = (0..2)
            .map(|i| ResnetBlock2D::load(&vb.pp("resnets").pp(i), channels, channels, resnet))
            .collect::<Result<_>>()?;
        let attentions = if add_attention {
            vec![MidAttention::Spatial(Attention::load_spatial(
                &vb.pp("attentions.0"),
                channels,
                1,
                resnet.groups,
                resnet.eps,
                kernel,
            )?)]
        } else {
            Vec::new()
        };
        Ok(Self {
            resnets,
            attentions,
        })
    }

    pub fn forward(
        &self,
        x: Tensor<4>,
        temb: Option<&Tensor<2>>,
        context: Option<&UNetContext>,
    ) -> Tensor<4> {
        let mut x = self.resnets[0].forward(x, temb);
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            x = match (attn, context) {
                (MidAttention::Transformer(t), Some(ctx)) => t.forward(x, ctx),
                (MidAttention::Transformer(_), None) => x,
                (MidAttention::Spatial(a), _) => a.forward_spatial(x),
            };
            x = resnet.forward(x, temb);
        }
        if self.attentions.is_empty() {
            x = self.resnets[1].forward(x, temb);
        }
        x
    }
}

/// An up block: resnets over `[x, skip]` (UNet) or `x` alone (VAE decoder), each optionally
/// followed by a transformer, then an optional upsampler. Covers `UpBlock2D`,
/// `CrossAttnUpBlock2D` and `UpDecoderBlock2D`.
#[derive(Debug, Clone)]
pub struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    upsampler: Option<Upsample2D>,
    skips: bool,
}

/// How one up block is built.
pub struct UpSpec<'a> {
    /// Channels coming from the previous up block.
    pub c_prev: usize,
    /// Channels of the down block this level mirrors (the last skip's channels).
    pub c_in: usize,
    pub c_out: usize,
    pub layers: usize,
    pub resnet: &'a ResnetSettings,
    pub transformer: Option<&'a TransformerSettings>,
    pub upsample: bool,
    /// UNet up blocks concatenate skip connections; the VAE decoder's do not.
    pub skips: bool,
}

impl UpBlock {
    pub fn load(vb: &Loader, spec: &UpSpec) -> Result<Self> {
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for j in 0..spec.layers {
            let c_res_in = if j == 0 { spec.c_prev } else { spec.c_out };
            let c_skip = if !spec.skips {
                0
            } else if j == spec.layers - 1 {
                spec.c_in
            } else {
                spec.c_out
            };
            resnets.push(ResnetBlock2D::load(
                &vb.pp("resnets").pp(j),
                c_res_in + c_skip,
                spec.c_out,
                spec.resnet,
            )?);
            if let Some(t) = spec.transformer {
                attentions.push(Transformer2DModel::load(
                    &vb.pp("attentions").pp(j),
                    spec.c_out,
                    t,
                )?);
            }
        }
        let upsampler = if spec.upsample {
            Some(Upsample2D::load(&vb.pp("upsamplers.0"), spec.c_out)?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            upsampler,
            skips: spec.skips,
        })
    }

    /// [`forward`](Self::forward) on row bands, for blocks without skips, attention or time
    /// embedding (the VAE decoder's).
    pub fn forward_banded(
        &self,
        mut x: crate::models::banded::Bands,
    ) -> crate::models::banded::Bands {
        debug_assert!(!self.skips && self.attentions.is_empty());
        for resnet in &self.resnets {
            x = resnet.forward_banded(x);
        }
        if let Some(up) = &self.upsampler {
            x = up.forward_banded(x);
        }
        x
    }

    /// How many skip states this block consumes.
    pub fn num_skips(&self) -> usize {
        if self.skips { self.resnets.len() } else { 0 }
    }

    /// `skips` are consumed from the end. `upsample_size` forces the upsampler's output size
    /// (needed when the latent is not a multiple of the total down factor).
    pub fn forward(
        &self,
        mut x: Tensor<4>,
        skips: &mut Vec<Tensor<4>>,
        temb: Option<&Tensor<2>>,
        context: Option<&UNetContext>,
        upsample_size: Option<[usize; 2]>,
    ) -> Tensor<4> {
        for (j, resnet) in self.resnets.iter().enumerate() {
            if self.skips {
                let skip = skips
                    .pop()
                    .expect("the down path pushes one state per up resnet");
                x = Tensor::cat(vec![x, skip], 1);
            }
            x = resnet.forward(x, temb);
            if let (Some(attn), Some(ctx)) = (self.attentions.get(j), context) {
                x = attn.forward(x, ctx);
            }
        }
        if let Some(up) = &self.upsampler {
            x = up.forward(x, upsample_size);
        }
        x
    }
}
