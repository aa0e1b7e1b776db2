//! fastcomposer: FastComposer (tuning-free, multi-subject, subject-driven image generation on
//! the Stable Diffusion 1.5 family) on burn — natively, on WebGPU and on the CPU in wasm.
//!
//! Layers, from the bottom up; each module uses only the ones above it in this list
//! (`crate/tests/suite/layers.rs` checks it, README's "Architecture" explains it):
//! - [`error`], [`rng`]: typed errors; the seeded noise, identical natively and in wasm;
//! - [`tokenizer`]: CLIP BPE + subject markers;
//! - [`config`]: what a model is — each component's config, [`config::ModelConfig`], its parts,
//!   and the weight-index traits;
//! - [`kernels`]: how operations are computed (device, attention, convolutions, host kernels);
//! - [`quant`]: stored types and block quantization, in one place;
//! - [`io`]: files — the GGUF bundle, safetensors, PyTorch checkpoints, diffusers directories,
//!   the converter, random weights as a source;
//! - [`models`]: the components, named like diffusers / transformers;
//! - [`scheduler`]: DDIM, PNDM, Euler and LCM behind one trait;
//! - [`pipeline`]: loading a model and generating with it;
//! - the faces: `wasm` (the JS API), `bench` (behind the `bench` feature) and the CLI
//!   (`src/bin/fastcomposer/`).

pub mod config;
pub mod error;
pub mod io;
#[doc(hidden)]
pub mod kernels;
pub mod models;
pub mod pipeline;
#[doc(hidden)]
pub mod quant;
pub mod rng;
pub mod scheduler;
pub mod tokenizer;

#[cfg(feature = "bench")]
pub mod bench;
#[cfg(target_arch = "wasm32")]
pub mod wasm;

pub use error::{Error, Result};
