//! diffusers' `UNet2DConditionModel` config.

use serde::Deserialize;

use crate::error::{Error, Result};

/// A config value that is either one value for all levels or one per level.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(untagged)]
pub enum PerLevel<T> {
    One(T),
    Each(Vec<T>),
}

impl<T: Clone> PerLevel<T> {
    /// The value for each of `n` levels.
    pub fn levels(&self, n: usize, what: &str) -> Result<Vec<T>> {
        match self {
            PerLevel::One(v) => Ok(vec![v.clone(); n]),
            PerLevel::Each(v) if v.len() == n => Ok(v.clone()),
            PerLevel::Each(v) => Err(Error::invalid(format!(
                "unet config: {what} has {} entries for {n} blocks",
                v.len()
            ))),
        }
    }
}

/// diffusers' `UNet2DConditionModel` config (`unet/config.json`). Defaults: SD1.5
/// (runwayml/stable-diffusion-v1-5 `unet/config.json`). Settings that select architectures this
/// crate does not implement are read so that they can be refused by name.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(default)]
pub struct UNet2DConditionConfig {
    /// Latent size the model was trained at (`null` in a saved config reads as SD1.5's 64).
    #[serde(deserialize_with = "super::null_or::<_, 64>")]
    pub sample_size: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub center_input_sample: bool,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub down_block_types: Vec<String>,
    pub mid_block_type: Option<String>,
    pub up_block_types: Vec<String>,
    pub only_cross_attention: PerLevel<bool>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: PerLevel<usize>,
    pub downsample_padding: usize,
    pub mid_block_scale_factor: f64,
    pub act_fn: String,
    pub norm_num_groups: usize,
    pub norm_eps: f64,
    pub cross_attention_dim: PerLevel<usize>,
    pub transformer_layers_per_block: PerLevel<usize>,
    pub attention_head_dim: PerLevel<usize>,
    pub num_attention_heads: Option<PerLevel<usize>>,
    pub use_linear_projection: bool,
    pub upcast_attention: bool,
    pub dual_cross_attention: bool,
    pub resnet_time_scale_shift: String,
    pub time_embedding_type: String,
    pub class_embed_type: Option<String>,
    pub addition_embed_type: Option<String>,
    pub encoder_hid_dim: Option<usize>,
    pub conv_in_kernel: usize,
    pub conv_out_kernel: usize,
}

impl Default for UNet2DConditionConfig {
    fn default() -> Self {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        Self {
            sample_size: 64,
            in_channels: 4,
            out_channels: 4,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: s(&[
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ]),
            mid_block_type: Some("UNetMidBlock2DCrossAttn".into()),
            up_block_types: s(&[
                "UpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
            ]),
            only_cross_attention: PerLevel::One(false),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: PerLevel::One(2),
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            act_fn: "silu".into(),
            norm_num_groups: 32,
            norm_eps: 1e-5,
            cross_attention_dim: PerLevel::One(768),
            transformer_layers_per_block: PerLevel::One(1),
            attention_head_dim: PerLevel::One(8),
            num_attention_heads: None,
            use_linear_projection: false,
            upcast_attention: false,
            dual_cross_attention: false,
            resnet_time_scale_shift: "default".into(),
            time_embedding_type: "positional".into(),
            class_embed_type: None,
            addition_embed_type: None,
            encoder_hid_dim: None,
            conv_in_kernel: 3,
            conv_out_kernel: 3,
        }
    }
}

impl UNet2DConditionConfig {
    /// Refuse settings this implementation does not cover, by name.
    pub(crate) fn check(&self) -> Result<()> {
        let bad = |what: String| Err(Error::invalid(format!("unet config: unsupported {what}")));
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return bad(format!(
                "block layout: {} block_out_channels, {} down and {} up block types",
                n,
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        if self
            .only_cross_attention
            .levels(n, "only_cross_attention")?
            .iter()
            .any(|&b| b)
        {
            return bad("only_cross_attention = true".into());
        }
        if self.dual_cross_attention {
            return bad("dual_cross_attention = true".into());
        }
        if self.resnet_time_scale_shift != "default" {
            return bad(format!(
                "resnet_time_scale_shift = {:?}",
                self.resnet_time_scale_shift
            ));
        }
        if self.time_embedding_type != "positional" {
            return bad(format!(
                "time_embedding_type = {:?}",
                self.time_embedding_type
            ));
        }
        if let Some(c) = &self.class_embed_type {
            return bad(format!("class_embed_type = {c:?}"));
        }
        if let Some(c) = &self.addition_embed_type {
            return bad(format!("addition_embed_type = {c:?}"));
        }
        if self.encoder_hid_dim.is_some() {
            return bad("encoder_hid_dim".into());
        }
        if self.conv_in_kernel != 3 || self.conv_out_kernel != 3 {
            return bad("conv_in_kernel/conv_out_kernel other than 3".into());
        }
        if let Some(m) = &self.mid_block_type
            && m != "UNetMidBlock2DCrossAttn"
        {
            return bad(format!("mid_block_type = {m:?}"));
        }
        for t in &self.down_block_types {
            if t != "CrossAttnDownBlock2D" && t != "DownBlock2D" {
                return bad(format!("down block type {t:?}"));
            }
        }
        for t in &self.up_block_types {
            if t != "CrossAttnUpBlock2D" && t != "UpBlock2D" {
                return bad(format!("up block type {t:?}"));
            }
        }
        if self.norm_num_groups == 0 {
            return bad("norm_num_groups = 0".into());
        }
        Ok(())
    }

    /// Heads per level: diffusers reads `attention_head_dim` as the number of heads when
    /// `num_attention_heads` is not set (a historical naming quirk SD1.5 relies on).
    pub(crate) fn heads(&self, n: usize) -> Result<Vec<usize>> {
        match &self.num_attention_heads {
            Some(h) => h.levels(n, "num_attention_heads"),
            None => self.attention_head_dim.levels(n, "attention_head_dim"),
        }
    }

    /// Total spatial down factor of the UNet (2^(levels-1)).
    pub fn down_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    /// The first cross-attention dim (the text conditioning's width).
    pub fn context_dim(&self) -> usize {
        match &self.cross_attention_dim {
            PerLevel::One(v) => *v,
            PerLevel::Each(v) => v.first().copied().unwrap_or(0),
        }
    }
}
