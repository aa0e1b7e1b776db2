//! The model components, one file per reference class.

pub mod clip;
pub mod clip_text;
pub mod clip_vision;
pub mod fuser;
pub mod unet;
pub mod vae;
