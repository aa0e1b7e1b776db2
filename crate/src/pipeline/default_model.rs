//! The model used when none is given: the small FastComposer trained in this repository
//! (`tools/train/`, model card in `docs/default-model.md`), exported as an int8 bundle by
//! `fastcomposer convert` to `models/default.gguf`.
//!
//! Natively the bundle is embedded in the binary. The wasm build does not embed it (a page
//! fetches it, streamed, verified and cached: see the JS API), so the wasm stays small.

#[cfg(not(target_arch = "wasm32"))]
use burn::tensor::Device;

#[cfg(not(target_arch = "wasm32"))]
use super::FastComposer;
#[cfg(not(target_arch = "wasm32"))]
use crate::{error::Result, io::bundle::Bundle, kernels::KernelOptions};

/// How the default model describes itself to users.
pub const LABEL: &str = "built-in default model (small, trained here on procedural scenes: \
     cats, robots, birds and cups at 128x128; see docs/default-model.md)";

/// The embedded bundle's bytes.
#[cfg(not(target_arch = "wasm32"))]
pub const BUNDLE: &[u8] = include_bytes!("../../../models/default.gguf");

/// The embedded bundle, parsed and verified (checksums).
#[cfg(not(target_arch = "wasm32"))]
pub fn bundle() -> Result<Bundle> {
    Bundle::from_bytes(BUNDLE.to_vec())
}

/// Load the default model on `device`.
#[cfg(not(target_arch = "wasm32"))]
pub fn load(device: &Device, kernels: impl Into<KernelOptions>) -> Result<FastComposer> {
    FastComposer::load_bundle(&bundle()?, device, kernels)
}
