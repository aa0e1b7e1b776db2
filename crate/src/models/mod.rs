//! The model components, one file per reference class, named like diffusers / transformers so
//! that module paths are checkpoint keys: the CLIP encoders and FastComposer's fuser, the
//! `UNet2DConditionModel`, the `AutoencoderKL` and the tiny autoencoder (TAESD), with the blocks they share
//! ([`unet_2d_blocks`], [`resnet`], [`attention`], [`embeddings`]), the layers ([`nn`], [`banded`])
//! and the [`loader`] that reads their weights by key.

pub mod attention;
pub mod autoencoder_tiny;
pub mod banded;
pub mod clip;
pub mod clip_text;
pub mod clip_vision;
pub mod embeddings;
pub mod forward;
pub mod fuser;
pub mod loader;
pub mod nn;
pub mod resnet;
pub mod unet;
pub mod unet_2d_blocks;
pub mod vae;
