//! diffusers `AutoencoderKL` (`autoencoder_kl.py`, `vae.py`): the encoder (image -> latent
//! moments) and the decoder (latent -> image). Generation needs only the decoder.

use burn::tensor::Tensor;

use super::resnet::ResnetSettings;
use super::unet_2d_blocks::{DownBlock, DownSpec, MidBlock, UpBlock, UpSpec};
use crate::error::{Error, Result};
use crate::kernels::attention::AttentionKernel;
use crate::models::banded::Bands;
use crate::models::loader::Loader;
use crate::models::nn::{Activation, Conv2d, GroupNorm};

pub use crate::config::AutoencoderKLConfig;

impl AutoencoderKLConfig {
    fn resnet(&self) -> Result<ResnetSettings> {
        Ok(ResnetSettings {
            groups: self.norm_num_groups,
            eps: 1e-6,
            act: Activation::parse(&self.act_fn)?,
            temb: None,
            output_scale_factor: 1.0,
        })
    }
}

/// The VAE decoder with `post_quant_conv`.
#[derive(Debug, Clone)]
pub struct VaeDecoder {
    post_quant_conv: Option<Conv2d>,
    conv_in: Conv2d,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    act: Activation,
    pub config: AutoencoderKLConfig,
    /// Largest activation buffer in bytes; above it the up blocks run on row bands
    /// ([`crate::banded`]).
    pub max_buffer_bytes: usize,
}

impl VaeDecoder {
    /// Load from a loader over the VAE's keys (`decoder.*`, `post_quant_conv.*`).
    pub fn load(
        vb: &Loader,
        config: &AutoencoderKLConfig,
        kernel: AttentionKernel,
    ) -> Result<Self> {
        config.check()?;
        let c = config;
        let resnet = c.resnet()?;
        let boc = &c.block_out_channels;
        let n = boc.len();
        let lc = c.latent_channels;
        let dec = vb.pp("decoder");
        let rev: Vec<usize> = boc.iter().rev().copied().collect();
        let mut up_blocks = Vec::new();
        let mut c_out = rev[0];
        for i in 0..n {
            let c_prev = c_out;
            c_out = rev[i];
            up_blocks.push(UpBlock::load(
                &dec.pp("up_blocks").pp(i),
                &UpSpec {
                    c_prev,
                    c_in: c_prev,
                    c_out,
                    layers: c.layers_per_block + 1,
                    resnet: &resnet,
                    transformer: None,
                    upsample: i + 1 < n,
                    skips: false,
                },
            )?);
        }
        Ok(Self {
            post_quant_conv: if c.use_post_quant_conv {
                Some(Conv2d::load(
                    &vb.pp("post_quant_conv"),
                    lc,
                    lc,
                    1,
                    1,
                    (0, 0),
                    true,
                )?)
            } else {
                None
            },
            conv_in: Conv2d::load(&dec.pp("conv_in"), lc, boc[n - 1], 3, 1, (1, 1), true)?,
            mid_block: MidBlock::load_vae(
                &dec.pp("mid_block"),
                boc[n - 1],
                &resnet,
                c.mid_block_add_attention,
                kernel,
            )?,
            up_blocks,
            conv_norm_out: GroupNorm::load(
                &dec.pp("conv_norm_out"),
                c.norm_num_groups,
                boc[0],
                1e-6,
            )?,
            conv_out: Conv2d::load(
                &dec.pp("conv_out"),
                boc[0],
                c.out_channels,
                3,
                1,
                (1, 1),
                true,
            )?,
            act: resnet.act,
            config: c.clone(),
            // One budget for the largest buffer: attention scores and activations alike.
            max_buffer_bytes: kernel.max_buffer_bytes(),
        })
    }

    /// Bytes of the largest activation of the up path for latents `[b, _, h, w]` (f32).
    pub fn largest_activation(&self, b: usize, h: usize, w: usize) -> usize {
        let rev: Vec<usize> = self
            .config
            .block_out_channels
            .iter()
            .rev()
            .copied()
            .collect();
        let mut largest = 0;
        let (mut hh, mut ww, mut c_prev) = (h, w, rev[0]);
        for (i, &c) in rev.iter().enumerate() {
            largest = largest.max(c_prev.max(c) * hh * ww);
            if i + 1 < rev.len() {
                hh *= 2;
                ww *= 2;
                largest = largest.max(c * hh * ww); // the upsampler's output
            }
            c_prev = c;
        }
        b * largest * 4
    }

    /// `latents` `[B, latent_channels, h, w]`, already divided by the scaling factor ->
    /// image `[B, out_channels, h·f, w·f]` in about [-1, 1] (not clamped).
    pub fn forward(&self, latents: Tensor<4>) -> Result<Tensor<4>> {
        let [_, c, h, w] = latents.dims();
        if c != self.config.latent_channels || h == 0 || w == 0 {
            return Err(Error::invalid(format!(
                "vae decoder: latents {:?} do not have {} channels",
                latents.dims(),
                self.config.latent_channels
            )));
        }
        let mut x = match &self.post_quant_conv {
            Some(conv) => conv.forward(latents),
            None => latents,
        };
        x = self.conv_in.forward(x);
        x = self.mid_block.forward(x, None, None);
        let [b, _, h, w] = x.dims();
        if self.largest_activation(b, h, w) > self.max_buffer_bytes {
            // Too large for one buffer: the up path on row bands of at most half the budget
            // (a band and its halo rows, and the nearest upsampling, stay within it).
            let mut bands = Bands::split(x, self.max_buffer_bytes / 2);
            for block in &self.up_blocks {
                bands = block.forward_banded(bands);
            }
            let bands = bands
                .group_norm(&self.conv_norm_out)
                .act(self.act)
                .conv(&self.conv_out);
            return Ok(bands.concat());
        }
        for block in &self.up_blocks {
            x = block.forward(x, &mut Vec::new(), None, None, None);
        }
        let x = self.conv_norm_out.forward_act(x, self.act);
        Ok(self.conv_out.forward(x))
    }
}

/// The VAE encoder with `quant_conv`.
#[derive(Debug, Clone)]
pub struct VaeEncoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    quant_conv: Option<Conv2d>,
    act: Activation,
    pub config: AutoencoderKLConfig,
}

impl VaeEncoder {
    pub fn load(
        vb: &Loader,
        config: &AutoencoderKLConfig,
        kernel: AttentionKernel,
    ) -> Result<Self> {
        config.check()?;
        let c = config;
        let resnet = c.resnet()?;
        let boc = &c.block_out_channels;
        let n = boc.len();
        let lc = c.latent_channels;
        let enc = vb.pp("encoder");
        let mut down_blocks = Vec::new();
        let mut c_out = boc[0];
        for i in 0..n {
            let c_in = c_out;
            c_out = boc[i];
            down_blocks.push(DownBlock::load(
                &enc.pp("down_blocks").pp(i),
                &DownSpec {
                    c_in,
                    c_out,
                    layers: c.layers_per_block,
                    resnet: &resnet,
                    transformer: None,
                    downsample_padding: (i + 1 < n).then_some(0),
                },
            )?);
        }
        Ok(Self {
            conv_in: Conv2d::load(
                &enc.pp("conv_in"),
                c.in_channels,
                boc[0],
                3,
                1,
                (1, 1),
                true,
            )?,
            down_blocks,
            mid_block: MidBlock::load_vae(
                &enc.pp("mid_block"),
                boc[n - 1],
                &resnet,
                c.mid_block_add_attention,
                kernel,
            )?,
            conv_norm_out: GroupNorm::load(
                &enc.pp("conv_norm_out"),
                c.norm_num_groups,
                boc[n - 1],
                1e-6,
            )?,
            conv_out: Conv2d::load(&enc.pp("conv_out"), boc[n - 1], 2 * lc, 3, 1, (1, 1), true)?,
            quant_conv: if c.use_quant_conv {
                Some(Conv2d::load(
                    &vb.pp("quant_conv"),
                    2 * lc,
                    2 * lc,
                    1,
                    1,
                    (0, 0),
                    true,
                )?)
            } else {
                None
            },
            act: resnet.act,
            config: c.clone(),
        })
    }

    /// `image` `[B, in_channels, H, W]` in [-1, 1] -> moments `[B, 2·latent_channels, h, w]`
    /// (mean, then log-variance), before scaling.
    pub fn forward(&self, image: Tensor<4>) -> Result<Tensor<4>> {
        let [_, c, h, w] = image.dims();
        if c != self.config.in_channels || h == 0 || w == 0 {
            return Err(Error::invalid(format!(
                "vae encoder: image {:?} does not have {} channels",
                image.dims(),
                self.config.in_channels
            )));
        }
        let mut x = self.conv_in.forward(image);
        let mut states = Vec::new();
        for block in &self.down_blocks {
            x = block.forward(x, None, None, &mut states);
        }
        x = self.mid_block.forward(x, None, None);
        let x = self
            .conv_out
            .forward(self.conv_norm_out.forward_act(x, self.act));
        Ok(match &self.quant_conv {
            Some(conv) => conv.forward(x),
            None => x,
        })
    }
}
