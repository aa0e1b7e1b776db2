//! `CLIPVisionModelWithProjection` (transformers): patch + class embeddings, pre-LayerNorm
//! (`pre_layrnorm`, sic), transformer, post-LayerNorm on the class token, `visual_projection`
//! (bias-free). Output: the projected image embedding `[B, projection_dim]`, not normalised.

use burn::tensor::Tensor;

use super::clip::{ClipEncoder, EncoderShape};
use crate::error::{Error, Result};
use crate::kernels::attention::AttentionKernel;
use crate::models::loader::Loader;
use crate::models::nn::{Activation, Conv2d, LayerNorm, Linear};

pub use crate::config::ClipVisionConfig;

impl ClipVisionConfig {
    fn shape(&self) -> Result<EncoderShape> {
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return Err(Error::invalid(format!(
                "vision encoder config: image_size {} is not a multiple of patch_size {}",
                self.image_size, self.patch_size
            )));
        }
        let s = EncoderShape {
            hidden: self.hidden_size,
            intermediate: self.intermediate_size,
            layers: self.num_hidden_layers,
            heads: self.num_attention_heads,
            eps: self.layer_norm_eps,
            act: Activation::parse(&self.hidden_act)?,
        };
        s.check("vision encoder config")?;
        Ok(s)
    }

    fn num_positions(&self) -> usize {
        (self.image_size / self.patch_size).pow(2) + 1
    }
}

/// The CLIP vision tower with its projection.
#[derive(Debug, Clone)]
pub struct ClipVisionModel {
    class_embedding: Tensor<1>,
    patch_embedding: Conv2d,
    position_embedding: Tensor<2>,
    pre_layrnorm: LayerNorm,
    encoder: ClipEncoder,
    post_layernorm: LayerNorm,
    visual_projection: Linear,
    pub config: ClipVisionConfig,
}

impl ClipVisionModel {
    /// Load from `vb`, holding `vision_model.*` and `visual_projection.weight`.
    pub fn load(vb: &Loader, config: &ClipVisionConfig, kernel: AttentionKernel) -> Result<Self> {
        let s = config.shape()?;
        let vm = vb.pp("vision_model");
        let emb = vm.pp("embeddings");
        let d = config.hidden_size;
        let p = config.patch_size;
        Ok(Self {
            class_embedding: emb.tensor("class_embedding", [d])?,
            patch_embedding: Conv2d::load(
                &emb.pp("patch_embedding"),
                config.num_channels,
                d,
                p,
                p,
                (0, 0),
                false,
            )?,
            position_embedding: emb
                .pp("position_embedding")
                .tensor("weight", [config.num_positions(), d])?,
            pre_layrnorm: LayerNorm::load(&vm.pp("pre_layrnorm"), d, s.eps)?,
            encoder: ClipEncoder::load(&vm.pp("encoder"), &s, kernel)?,
            post_layernorm: LayerNorm::load(&vm.pp("post_layernorm"), d, s.eps)?,
            visual_projection: Linear::load(
                &vb.pp("visual_projection"),
                d,
                config.projection_dim,
                false,
            )?,
            config: config.clone(),
        })
    }

    /// Key suffixes that may be present but are not parameters.
    pub const IGNORED_KEYS: &'static [&'static str] = &["position_ids"];

    /// `pixel_values` `[B, C, S, S]` (already normalised) -> `[B, projection_dim]`.
    pub fn forward(&self, pixel_values: Tensor<4>) -> Result<Tensor<2>> {
        let [b, c, h, w] = pixel_values.dims();
        let s = self.config.image_size;
        if c != self.config.num_channels || h != s || w != s {
            return Err(Error::invalid(format!(
                "vision encoder: pixel_values has shape [{b}, {c}, {h}, {w}], expected [B, {}, {s}, {s}]",
                self.config.num_channels
            )));
        }
        let d = self.config.hidden_size;
        let patches = self.patch_embedding.forward(pixel_values); // [B, D, g, g]
        let n = patches.dims()[2] * patches.dims()[3];
        let patches = patches.reshape([b, d, n]).swap_dims(1, 2); // [B, n, D]
        let cls = self
            .class_embedding
            .clone()
            .reshape([1, 1, d])
            .expand([b, 1, d]);
        let x =
            Tensor::cat(vec![cls, patches], 1) + self.position_embedding.clone().unsqueeze_dim(0);
        let x = self.encoder.forward(self.pre_layrnorm.forward(x), false);
        let pooled = x.narrow(1, 0, 1).reshape([b, d]);
        Ok(self
            .visual_projection
            .forward(self.post_layernorm.forward(pooled)))
    }
}
