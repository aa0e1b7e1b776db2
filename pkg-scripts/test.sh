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

# The same parity tests on burn's wgpu device natively, where a Vulkan device exists
# (`apt-get install mesa-vulkan-drivers` gives lavapipe, a software one; CI installs it).
# FASTCOMPOSER_TEST_WGPU=1 makes a missing Vulkan device an error instead of a skip.
if ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1; then
  echo "== rust: parity tests on wgpu (Vulkan)"
  export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
  FASTCOMPOSER_TEST_DEVICE=wgpu cargo test --release --test parity --test scheduler -- --test-threads 1
elif [ "${FASTCOMPOSER_TEST_WGPU:-0}" = "1" ]; then
  echo "FASTCOMPOSER_TEST_WGPU=1 but no Vulkan driver is installed" >&2
  exit 1
else
  echo "== (skipping the wgpu parity tests: no Vulkan driver; apt-get install mesa-vulkan-drivers)"
fi
echo "== all tests passed"
