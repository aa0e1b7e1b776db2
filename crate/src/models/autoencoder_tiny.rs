//! diffusers `AutoencoderTiny` (`autoencoder_tiny.py`, `DecoderTiny` in `vae.py`): TAESD, a
//! distilled autoencoder for the SD latent space — plain 3×3 convolutions, ReLUs and nearest
//! upsampling, no normalisation or attention, so it decodes at a small fraction of the
//! `AutoencoderKL` decoder's cost. Only the decoder is here. Its input is the latents as the UNet
//! makes them divided by its scaling factor (1.0 for TAESD: the latents as they are).
//!
//! The decoder is one `nn.Sequential` (`decoder.layers.{i}`): a 3×3 convolution and the
//! activation, then per level its `AutoencoderTinyBlock`s, a nearest ×2 upsampling (all levels
//! but the last) and a 3×3 convolution (without bias, but the last one's, which gives the image).
//! One width throughout, as in diffusers.

use burn::tensor::Tensor;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};

use crate::error::Result;
use crate::models::loader::Loader;
use crate::models::nn::{Activation, Conv2d};

pub use crate::config::AutoencoderTinyConfig;

/// `AutoencoderTinyBlock` as the decoder has it (same channels in and out, so its skip is the
/// identity): three 3×3 convolutions with the activation between them, a ReLU over the sum with
/// the input.
#[derive(Debug, Clone)]
struct TinyBlock {
    conv: [Conv2d; 3],
    act: Activation,
}

impl TinyBlock {
    fn load(vb: &Loader, channels: usize, act: Activation) -> Result<Self> {
        let conv =
            |i: usize| Conv2d::load(&vb.pp("conv").pp(i), channels, channels, 3, 1, (1, 1), true);
        Ok(Self {
            conv: [conv(0)?, conv(2)?, conv(4)?],
            act,
        })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = self.act.forward(self.conv[0].forward(x.clone()));
        let h = self.act.forward(self.conv[1].forward(h));
        Activation::Relu.forward(self.conv[2].forward(h) + x)
    }
}

#[derive(Debug, Clone)]
enum Layer {
    Conv(Conv2d),
    Act(Activation),
    Block(TinyBlock),
    Upsample,
}

/// The TAESD decoder: latents `[B, C, h, w]` to an image `[B, 3, 8h, 8w]` in about [-1, 1].
#[derive(Debug, Clone)]
pub struct TinyDecoder {
    layers: Vec<Layer>,
    pub config: AutoencoderTinyConfig,
}

impl TinyDecoder {
    /// Load from a loader over the autoencoder's keys (`decoder.layers.*`).
    pub fn load(vb: &Loader, config: &AutoencoderTinyConfig) -> Result<Self> {
        config.check_decoder()?;
        let c = config;
        let act = Activation::parse(&c.act_fn)?;
        let vb = vb.pp("decoder").pp("layers");
        let width = c.decoder_block_out_channels[0];
        let mut layers = vec![
            Layer::Conv(Conv2d::load(
                &vb.pp(0),
                c.latent_channels,
                width,
                3,
                1,
                (1, 1),
                true,
            )?),
            Layer::Act(act),
        ];
        let levels = c.num_decoder_blocks.len();
        for (i, &blocks) in c.num_decoder_blocks.iter().enumerate() {
            let last = i + 1 == levels;
            for _ in 0..blocks {
                layers.push(Layer::Block(TinyBlock::load(
                    &vb.pp(layers.len()),
                    width,
                    act,
                )?));
            }
            if !last {
                layers.push(Layer::Upsample);
            }
            let c_out = if last { c.out_channels } else { width };
            layers.push(Layer::Conv(Conv2d::load(
                &vb.pp(layers.len()),
                width,
                c_out,
                3,
                1,
                (1, 1),
                last,
            )?));
        }
        Ok(Self {
            layers,
            config: c.clone(),
        })
    }

    /// `AutoencoderTiny.decode(latents).sample`.
    pub fn forward(&self, latents: Tensor<4>) -> Result<Tensor<4>> {
        let mut x = (latents / 3.0).tanh() * 3.0;
        for layer in &self.layers {
            x = match layer {
                Layer::Conv(c) => c.forward(x),
                Layer::Act(a) => a.forward(x),
                Layer::Block(b) => b.forward(x),
                Layer::Upsample => {
                    let [_, _, h, w] = x.dims();
                    interpolate(
                        x,
                        InterpolateOptions::new(InterpolateMode::Nearest)
                            .with_output_size([2 * h, 2 * w]),
                    )
                }
            };
        }
        Ok(x * 2.0 - 1.0)
    }
}
