//! transformers' `CLIPTextConfig`.

use serde::Deserialize;

/// transformers' `CLIPTextConfig` (its `config.json`). Defaults: SD1.5's text encoder,
/// CLIP ViT-L/14 (openai/clip-vit-large-patch14, `text_encoder/config.json`).
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(default)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}
