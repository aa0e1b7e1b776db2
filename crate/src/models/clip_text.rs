//! `CLIPTextModel` (transformers): token + position embeddings, causal pre-LN transformer,
//! final LayerNorm. Output: the last hidden state `[B, L, hidden]`.

use burn::tensor::{Tensor, TensorData};

use super::clip::{ClipEncoder, EncoderShape};
use crate::error::{Error, Result};
use crate::kernels::attention::AttentionKernel;
use crate::models::loader::{EmbeddingTable, Loader};
use crate::models::nn::{Activation, LayerNorm};

pub use crate::config::ClipTextConfig;

impl ClipTextConfig {
    fn shape(&self) -> Result<EncoderShape> {
        let s = EncoderShape {
            hidden: self.hidden_size,
            intermediate: self.intermediate_size,
            layers: self.num_hidden_layers,
            heads: self.num_attention_heads,
            eps: self.layer_norm_eps,
            act: Activation::parse(&self.hidden_act)?,
        };
        s.check("text encoder config")?;
        Ok(s)
    }
}

/// The CLIP text transformer.
#[derive(Debug, Clone)]
pub struct ClipTextModel {
    /// On the host: only the rows a prompt uses go to the device.
    token_embedding: EmbeddingTable,
    position_embedding: Tensor<2>,
    encoder: ClipEncoder,
    final_layer_norm: LayerNorm,
    pub config: ClipTextConfig,
}

impl ClipTextModel {
    /// Load from `vb`. Keys are accepted with or without the `text_model.` prefix
    /// (SD1.5 files have it; transformers 5 saves without it).
    pub fn load(vb: &Loader, config: &ClipTextConfig, kernel: AttentionKernel) -> Result<Self> {
        let s = config.shape()?;
        let vb = if vb.contains_prefix("text_model") {
            vb.pp("text_model")
        } else {
            vb.clone()
        };
        let emb = vb.pp("embeddings");
        Ok(Self {
            token_embedding: emb
                .pp("token_embedding")
                .embedding("weight", [config.vocab_size, config.hidden_size])?,
            position_embedding: emb.pp("position_embedding").tensor(
                "weight",
                [config.max_position_embeddings, config.hidden_size],
            )?,
            encoder: ClipEncoder::load(&vb.pp("encoder"), &s, kernel)?,
            final_layer_norm: LayerNorm::load(&vb.pp("final_layer_norm"), s.hidden, s.eps)?,
            config: config.clone(),
        })
    }

    /// Key suffixes that may be present but are not parameters.
    pub const IGNORED_KEYS: &'static [&'static str] = &["position_ids"];

    /// `input_ids` `[B, L]` (L <= max_position_embeddings) -> last hidden state `[B, L, hidden]`.
    pub fn forward_ids(&self, ids: &[Vec<u32>]) -> Result<Tensor<3>> {
        let b = ids.len();
        let l = ids.first().map_or(0, |r| r.len());
        if b == 0 || l == 0 {
            return Err(Error::invalid("text encoder: empty input_ids"));
        }
        if l > self.config.max_position_embeddings {
            return Err(Error::invalid(format!(
                "text encoder: sequence length {l} exceeds max_position_embeddings {}",
                self.config.max_position_embeddings
            )));
        }
        let mut flat = Vec::with_capacity(b * l);
        for row in ids {
            if row.len() != l {
                return Err(Error::invalid(
                    "text encoder: input_ids rows differ in length",
                ));
            }
            for &id in row {
                if id as usize >= self.config.vocab_size {
                    return Err(Error::invalid(format!(
                        "text encoder: token id {id} is outside the vocabulary (size {})",
                        self.config.vocab_size
                    )));
                }
                flat.push(id as usize);
            }
        }
        let device = self.position_embedding.device();
        let d = self.config.hidden_size;
        let tok = Tensor::<3>::from_data(
            TensorData::new(self.token_embedding.rows(&flat), [b, l, d]),
            &device,
        );
        let pos = self
            .position_embedding
            .clone()
            .narrow(0, 0, l)
            .unsqueeze_dim::<3>(0);
        let x = self.encoder.forward(tok + pos, true);
        Ok(self.final_layer_norm.forward(x))
    }
}
