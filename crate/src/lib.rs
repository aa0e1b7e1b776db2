//! fastcomposer: FastComposer (tuning-free, multi-subject, subject-driven image generation on
//! the Stable Diffusion 1.5 family) on burn — natively, on WebGPU and on the CPU in wasm.
//!
//! Layout (named like the reference libraries so a reader can diff against them):
//! - [`tokenizer`]: CLIP BPE + subject markers;
//! - [`models`]: `clip_text`, `clip_vision`, `fuser`, `unet`, `vae`;
//! - [`scheduler`]: DDIM and PNDM behind one trait;
//! - [`attention`]: how attention is computed (sliced within a memory budget, or fused);
//! - [`conv`]: how convolutions are computed (Winograd on the CPU, [`winograd`]; matrix
//!   products over stacked windows on GPUs);
//! - [`weights`]: loading tensors by reference key names, with typed errors.

pub mod attention;
pub mod banded;
pub mod bench;
pub mod bundle;
pub mod components;
pub mod conv;
#[cfg(not(target_arch = "wasm32"))]
pub mod convert;
pub mod cpu_ops;
pub mod default_model;
pub mod device;
pub mod error;
#[cfg(feature = "webgpu")]
pub mod flash;
pub mod forward;
#[cfg(not(target_arch = "wasm32"))]
pub mod model_dir;
pub mod models;
pub mod nn;
pub mod pickle;
pub mod pipeline;
pub mod preprocess;
pub mod rng;
pub mod scheduler;
pub mod tokenizer;
#[cfg(target_arch = "wasm32")]
pub mod wasm;
pub mod weights;
pub mod winograd;

pub use error::{Error, Result};
