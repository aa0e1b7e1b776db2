//! diffusers' `AutoencoderKL` config.

use serde::Deserialize;

use crate::error::{Error, Result};

/// diffusers' `AutoencoderKL` config (`vae/config.json`). Defaults: SD1.5.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(default)]
pub struct AutoencoderKLConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub act_fn: String,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    pub sample_size: usize,
    pub scaling_factor: f64,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    pub mid_block_add_attention: bool,
}

impl Default for AutoencoderKLConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec!["DownEncoderBlock2D".into(); 4],
            up_block_types: vec!["UpDecoderBlock2D".into(); 4],
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            act_fn: "silu".into(),
            latent_channels: 4,
            norm_num_groups: 32,
            sample_size: 512,
            scaling_factor: 0.18215,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }
}

impl AutoencoderKLConfig {
    pub(crate) fn check(&self) -> Result<()> {
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(Error::invalid(
                "vae config: block types and block_out_channels differ in length",
            ));
        }
        if let Some(t) = self
            .down_block_types
            .iter()
            .find(|t| *t != "DownEncoderBlock2D")
        {
            return Err(Error::invalid(format!(
                "vae config: unsupported down block type {t:?}"
            )));
        }
        if let Some(t) = self
            .up_block_types
            .iter()
            .find(|t| *t != "UpDecoderBlock2D")
        {
            return Err(Error::invalid(format!(
                "vae config: unsupported up block type {t:?}"
            )));
        }
        if self.norm_num_groups == 0 {
            return Err(Error::invalid("vae config: norm_num_groups = 0"));
        }
        Ok(())
    }

    /// Pixels per latent cell (2^(levels-1)); 8 for SD1.5.
    pub fn scale_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }
}

/// diffusers' `AutoencoderTiny` config (TAESD, `config.json`). Defaults: madebyollin/taesd (SD1.5).
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(default)]
pub struct AutoencoderTinyConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub encoder_block_out_channels: Vec<usize>,
    pub decoder_block_out_channels: Vec<usize>,
    pub act_fn: String,
    pub upsample_fn: String,
    pub latent_channels: usize,
    pub upsampling_scaling_factor: usize,
    pub num_encoder_blocks: Vec<usize>,
    pub num_decoder_blocks: Vec<usize>,
    pub latent_magnitude: f64,
    pub latent_shift: f64,
    pub scaling_factor: f64,
}

impl Default for AutoencoderTinyConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            encoder_block_out_channels: vec![64; 4],
            decoder_block_out_channels: vec![64; 4],
            act_fn: "relu".into(),
            upsample_fn: "nearest".into(),
            latent_channels: 4,
            upsampling_scaling_factor: 2,
            num_encoder_blocks: vec![1, 3, 3, 3],
            num_decoder_blocks: vec![3, 3, 3, 1],
            latent_magnitude: 3.0,
            latent_shift: 0.5,
            scaling_factor: 1.0,
        }
    }
}

impl AutoencoderTinyConfig {
    pub(crate) fn check_decoder(&self) -> Result<()> {
        let n = self.decoder_block_out_channels.len();
        if n == 0 || self.num_decoder_blocks.len() != n {
            return Err(Error::invalid(
                "tiny vae config: decoder_block_out_channels and num_decoder_blocks differ in length",
            ));
        }
        if self.upsample_fn != "nearest" || self.upsampling_scaling_factor != 2 {
            return Err(Error::invalid(format!(
                "tiny vae config: only nearest upsampling by 2 is supported (got {} by {})",
                self.upsample_fn, self.upsampling_scaling_factor
            )));
        }
        let c = self.decoder_block_out_channels[0];
        if self.latent_channels == 0 || c == 0 || self.out_channels == 0 {
            return Err(Error::invalid("tiny vae config: zero channels"));
        }
        // diffusers' DecoderTiny maps each level's channels to themselves (its blocks and level
        // convolutions), so only one width throughout runs there.
        if self.decoder_block_out_channels.iter().any(|&x| x != c) {
            return Err(Error::invalid(format!(
                "tiny vae config: decoder_block_out_channels {:?} differ; the decoder keeps one width",
                self.decoder_block_out_channels
            )));
        }
        Ok(())
    }

    /// Pixels per latent cell (2^(levels-1)); 8 for TAESD.
    pub fn scale_factor(&self) -> usize {
        1 << self.decoder_block_out_channels.len().saturating_sub(1)
    }
}
