//! diffusers `UNet2DConditionModel` (`unet_2d_condition.py`): the noise predictor.
//!
//! `conv_in -> down blocks -> mid block -> up blocks (with skips) -> norm, SiLU, conv_out`,
//! conditioned on the timestep (sinusoidal embedding + MLP, added in every resnet) and on the
//! text conditioning (cross-attention in every transformer).

pub mod attention;
pub mod blocks;
pub mod embeddings;
pub mod resnet;

use burn::tensor::Tensor;
use serde::Deserialize;

use self::attention::TransformerSettings;
use self::blocks::{DownBlock, DownSpec, MidBlock, UpBlock, UpSpec};
use self::embeddings::{TimestepEmbedding, timestep_embedding};
use self::resnet::ResnetSettings;
use crate::attention::AttentionKernel;
use crate::error::{Error, Result};
use crate::nn::{Activation, Conv2d, GroupNorm};
use crate::weights::Loader;

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
    #[serde(deserialize_with = "crate::models::null_or::<_, 64>")]
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
    fn check(&self) -> Result<()> {
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
    fn heads(&self, n: usize) -> Result<Vec<usize>> {
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

/// The UNet.
#[derive(Debug, Clone)]
pub struct UNet2DConditionModel {
    conv_in: Conv2d,
    time_embedding: TimestepEmbedding,
    down_blocks: Vec<DownBlock>,
    mid_block: Option<MidBlock>,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    act: Activation,
    pub config: UNet2DConditionConfig,
}

impl UNet2DConditionModel {
    pub fn load(
        vb: &Loader,
        config: &UNet2DConditionConfig,
        kernel: AttentionKernel,
    ) -> Result<Self> {
        config.check()?;
        let c = config;
        let n = c.block_out_channels.len();
        let boc = &c.block_out_channels;
        let act = Activation::parse(&c.act_fn)?;
        let heads = c.heads(n)?;
        let layers = c.layers_per_block.levels(n, "layers_per_block")?;
        let cross = c.cross_attention_dim.levels(n, "cross_attention_dim")?;
        let tlayers = c
            .transformer_layers_per_block
            .levels(n, "transformer_layers_per_block")?;
        let temb_dim = boc[0] * 4;
        let resnet = ResnetSettings {
            groups: c.norm_num_groups,
            eps: c.norm_eps,
            act,
            temb: Some(temb_dim),
            output_scale_factor: 1.0,
        };
        let transformer = |i: usize| TransformerSettings {
            heads: heads[i],
            layers: tlayers[i],
            cross_dim: cross[i],
            groups: c.norm_num_groups,
            linear_projection: c.use_linear_projection,
            kernel,
        };

        let conv_in = Conv2d::load(&vb.pp("conv_in"), c.in_channels, boc[0], 3, 1, (1, 1), true)?;
        let time_embedding =
            TimestepEmbedding::load(&vb.pp("time_embedding"), boc[0], temb_dim, act)?;
        let mut down_blocks = Vec::new();
        let mut c_out = boc[0];
        for (i, kind) in c.down_block_types.iter().enumerate() {
            let c_in = c_out;
            c_out = boc[i];
            let t = transformer(i);
            down_blocks.push(DownBlock::load(
                &vb.pp("down_blocks").pp(i),
                &DownSpec {
                    c_in,
                    c_out,
                    layers: layers[i],
                    resnet: &resnet,
                    transformer: (kind == "CrossAttnDownBlock2D").then_some(&t),
                    downsample_padding: (i + 1 < n).then_some(c.downsample_padding),
                },
            )?);
        }

        let mid_block = match c.mid_block_type {
            Some(_) => Some(MidBlock::load_cross_attn(
                &vb.pp("mid_block"),
                boc[n - 1],
                &ResnetSettings {
                    output_scale_factor: c.mid_block_scale_factor,
                    ..resnet
                },
                &transformer(n - 1),
            )?),
            None => None,
        };

        let mut up_blocks = Vec::new();
        let rev: Vec<usize> = boc.iter().rev().copied().collect();
        let mut c_out = rev[0];
        for (i, kind) in c.up_block_types.iter().enumerate() {
            let c_prev = c_out;
            c_out = rev[i];
            let c_in = rev[(i + 1).min(n - 1)];
            let level = n - 1 - i;
            let t = transformer(level);
            up_blocks.push(UpBlock::load(
                &vb.pp("up_blocks").pp(i),
                &UpSpec {
                    c_prev,
                    c_in,
                    c_out,
                    layers: layers[level] + 1,
                    resnet: &resnet,
                    transformer: (kind == "CrossAttnUpBlock2D").then_some(&t),
                    upsample: i + 1 < n,
                    skips: true,
                },
            )?);
        }

        Ok(Self {
            conv_in,
            time_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::load(
                &vb.pp("conv_norm_out"),
                c.norm_num_groups,
                boc[0],
                c.norm_eps,
            )?,
            conv_out: Conv2d::load(
                &vb.pp("conv_out"),
                boc[0],
                c.out_channels,
                3,
                1,
                (1, 1),
                true,
            )?,
            act,
            config: c.clone(),
        })
    }

    /// `sample` `[B, C, H, W]`, `timestep` `[B]`, `encoder_hidden_states` `[B, T, D]` ->
    /// predicted noise `[B, C_out, H, W]`.
    pub fn forward(
        &self,
        sample: Tensor<4>,
        timestep: Tensor<1>,
        encoder_hidden_states: &Tensor<3>,
    ) -> Result<Tensor<4>> {
        let [b, ch, h, w] = sample.dims();
        let [bt] = timestep.dims();
        let [be, _, d] = encoder_hidden_states.dims();
        if ch != self.config.in_channels || bt != b || be != b || d != self.config.context_dim() {
            return Err(Error::invalid(format!(
                "unet: sample {:?}, timestep {:?}, encoder_hidden_states {:?} do not fit \
                 in_channels {} and cross_attention_dim {}",
                sample.dims(),
                timestep.dims(),
                encoder_hidden_states.dims(),
                self.config.in_channels,
                self.config.context_dim()
            )));
        }
        if h == 0 || w == 0 {
            return Err(Error::invalid("unet: empty sample"));
        }
        let c = &self.config;
        let sample = if c.center_input_sample {
            sample * 2.0 - 1.0
        } else {
            sample
        };

        // 1. time
        let t_emb = timestep_embedding(
            timestep,
            c.block_out_channels[0],
            c.flip_sin_to_cos,
            c.freq_shift,
        );
        let temb = self.time_embedding.forward(t_emb);
        let ctx = Some(encoder_hidden_states);

        // 2. pre-process
        let mut x = self.conv_in.forward(sample);

        // 3. down
        let mut states = vec![x.clone()];
        for block in &self.down_blocks {
            x = block.forward(x, Some(&temb), ctx, &mut states);
        }

        // 4. mid
        if let Some(mid) = &self.mid_block {
            x = mid.forward(x, Some(&temb), ctx);
        }

        // 5. up: each upsampler is sized like the skip it will meet next, which is exact
        //    also when H or W is not a multiple of the down factor.
        for block in &self.up_blocks {
            let keep = states.len() - block.num_skips();
            let mut skips = states.split_off(keep);
            let size = states.last().map(|s| {
                let [_, _, sh, sw] = s.dims();
                [sh, sw]
            });
            x = block.forward(x, &mut skips, Some(&temb), ctx, size);
        }

        // 6. post-process
        let x = self.conv_norm_out.forward_act(x, self.act);
        Ok(self.conv_out.forward(x))
    }
}

#[cfg(test)]
mod tests {
    use super::UNet2DConditionConfig;

    #[test]
    fn config_null_sample_size_reads_as_sd15() {
        // diffusers saves `"sample_size": null` for a UNet built without one.
        let c: UNet2DConditionConfig =
            serde_json::from_str(r#"{"sample_size": null, "cross_attention_dim": 768}"#).unwrap();
        assert_eq!(c.sample_size, 64);
        let c: UNet2DConditionConfig = serde_json::from_str(r#"{"sample_size": 32}"#).unwrap();
        assert_eq!(c.sample_size, 32);
        assert!(serde_json::from_str::<UNet2DConditionConfig>(r#"{"sample_size": "x"}"#).is_err());
    }
}
