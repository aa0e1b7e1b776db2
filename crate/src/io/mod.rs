//! Files: the model bundle ([`bundle`]: GGUF, read, streamed, written), safetensors files,
//! PyTorch checkpoints ([`pickle`]), diffusers-layout model directories ([`model_dir`]), the
//! converter between them ([`convert`]), LoRA files ([`lora`]), and made-up weights as a source
//! ([`RandomSource`]).

pub mod bundle;
#[cfg(not(target_arch = "wasm32"))]
pub mod convert;
pub mod lora;
#[cfg(not(target_arch = "wasm32"))]
pub mod model_dir;
pub mod pickle;
pub mod random;
pub mod safetensors;

pub use random::RandomSource;
