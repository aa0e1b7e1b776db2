#!/usr/bin/env bash
# Runs every test of the project: the Rust tests (CPU device) and the wasm32 compile check.
# Installs nothing system-wide except the wasm32 target (rustup).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== rust: fmt"
cargo fmt --all -- --check

echo "== rust: tests (release profile, CPU device)"
cargo test --release --workspace

echo "== wasm32: the crate compiles for wasm32-unknown-unknown"
rustup target add wasm32-unknown-unknown >/dev/null
cargo check --release --target wasm32-unknown-unknown -p fastcomposer --lib --no-default-features

if [ "${FASTCOMPOSER_TEST_WGPU:-0}" = "1" ]; then
  echo "== rust: tests on wgpu (Vulkan; lavapipe without a GPU)"
  FASTCOMPOSER_TEST_DEVICE=wgpu cargo test --release --workspace --test parity --test scheduler
fi
echo "== all tests passed"
