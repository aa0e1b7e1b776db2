//! The model used when none is given.
//!
//! Until the trained default model is embedded (issue 5), this is a small model with RANDOM
//! weights: it exercises every part of the pipeline but its images are noise. It says so
//! wherever it is used.

use burn::tensor::Device;

use crate::attention::AttentionKernel;
use crate::error::Result;
use crate::pipeline::{FastComposer, ModelConfig};

/// How the default model describes itself to users.
pub const LABEL: &str =
    "built-in RANDOM-WEIGHT model (wiring only: its images are noise; pass --model for a real one)";

/// The default model's architecture: the SD1.5 family at a size that runs anywhere
/// (128 px images, 16x16 latents, CLIP tokenizer and full vocabulary).
pub fn config() -> ModelConfig {
    let j = serde_json::json!({
        "text_encoder": {"vocab_size": 49408, "hidden_size": 64, "intermediate_size": 128,
                         "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 77},
        "image_encoder": {"hidden_size": 64, "intermediate_size": 128, "projection_dim": 64,
                          "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": 224, "patch_size": 32},
        "fuser": {"embed_dim": 64},
        "unet": {"sample_size": 16, "block_out_channels": [32, 64, 64], "layers_per_block": 1,
                 "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                 "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                 "cross_attention_dim": 64, "attention_head_dim": 4, "norm_num_groups": 16},
        "vae": {"block_out_channels": [16, 32, 32, 32], "layers_per_block": 1, "norm_num_groups": 8,
                "sample_size": 128,
                "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
                "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]},
        "scheduler": {}
    });
    serde_json::from_value(j).expect("static config")
}

/// Load the default model on `device`.
pub fn load(device: &Device, kernel: AttentionKernel) -> Result<FastComposer> {
    FastComposer::random(&config(), device, kernel)
}
