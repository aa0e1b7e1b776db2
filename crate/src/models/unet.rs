//! diffusers `UNet2DConditionModel` (`unet_2d_condition.py`): the noise predictor.
//!
//! `conv_in -> down blocks -> mid block -> up blocks (with skips) -> norm, SiLU, conv_out`,
//! conditioned on the timestep (sinusoidal embedding + MLP, added in every resnet) and on the
//! text conditioning (cross-attention in every transformer).

use burn::tensor::Tensor;

use super::attention::{SelfReference, TransformerSettings, UNetContext};
use super::embeddings::{TimestepEmbedding, timestep_embedding};
use super::resnet::ResnetSettings;
use super::unet_2d_blocks::{DownBlock, DownSpec, MidBlock, UpBlock, UpSpec};
use crate::error::{Error, Result};
use crate::kernels::attention::AttentionKernel;
use crate::models::loader::Loader;
use crate::models::nn::{Activation, Conv2d, GroupNorm};

pub use crate::config::{PerLevel, UNet2DConditionConfig};

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
        self.forward_with(sample, timestep, encoder_hidden_states, None)
    }

    /// [`Self::forward`] with self-subject attention: `reference` records (its reference pass)
    /// or adds the recorded features to every self-attention layer (the generated pass).
    pub fn forward_with(
        &self,
        sample: Tensor<4>,
        timestep: Tensor<1>,
        encoder_hidden_states: &Tensor<3>,
        reference: Option<&SelfReference>,
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
        let context = UNetContext {
            states: encoder_hidden_states,
            reference,
        };
        let ctx = Some(&context);

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
