//! The integration tests in one binary: one link of the crate and its dependencies instead of
//! one per file (`half_precision.rs` keeps its own process: burn fixes a device's float type
//! once). Run one file's tests with its module name as the filter, e.g.
//! `cargo test --release --test suite -- parity::`.

#[path = "../common/mod.rs"]
mod common;

mod bundle;
mod cli;
mod controls;
mod layers;
mod lora;
mod parity;
mod pipeline;
mod quantized_ops;
mod scheduler;
mod tokenizer;
mod weights;
