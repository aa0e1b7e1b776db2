#!/usr/bin/env bash
# Runs every test of the project: the Rust tests (CPU device; and wgpu where a Vulkan device
# exists), then the wasm build and the browser tests (demo end to end, npm package) in Chromium.
# Installs what it needs: the wasm32 target, wasm-bindgen-cli (pinned), npm dev dependencies, and
# Debian's chromium when run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== rust: fmt"
cargo fmt --all -- --check

echo "== rust: tests (release profile, CPU device)"
cargo test --release --workspace

# The CPU device computes wide 3×3 convolutions by Winograd's form and narrow ones by burn's
# kernel; the reference comparisons again with every 3×3 convolution forced to each tile size.
for tile in 4 2; do
  echo "== rust: parity and pipeline tests, 3x3 convolutions by Winograd F(${tile}x${tile}, 3x3)"
  FASTCOMPOSER_WINOGRAD=$tile cargo test --release --test parity --test pipeline
done

# The same parity tests on burn's wgpu device natively, where a Vulkan device exists
# (`apt-get install mesa-vulkan-drivers` gives lavapipe, a software one; CI installs it).
# FASTCOMPOSER_TEST_WGPU=1 makes a missing Vulkan device an error instead of a skip.
if ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1; then
  echo "== rust: parity tests on wgpu (Vulkan)"
  export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
  FASTCOMPOSER_TEST_DEVICE=wgpu cargo test --release --test parity --test scheduler --test quantized_ops -- --test-threads 1
  # f16 compute (what precision auto picks where the adapter has shader-f16; lavapipe has it)
  # against the same fixtures, in its own process: burn fixes a device's float type once.
  # FASTCOMPOSER_TEST_F16=1 makes a device without f16 an error instead of a skip. Minimal
  # autotuning: its candidates are timed on lavapipe's software cores for every new shape.
  FASTCOMPOSER_TEST_DEVICE=wgpu CUBECL_AUTOTUNE_LEVEL=minimal cargo test --release --test half_precision -- --test-threads 1
  # Sequential loading frees each stage's device memory before the next: same images as resident.
  # Whole generations from an int8 bundle with burn's flash attention kernels: the sliced one's.
  FASTCOMPOSER_TEST_DEVICE=wgpu cargo test --release --test bundle -- --test-threads 1 \
    sequential_residency fused_attention_generates
elif [ "${FASTCOMPOSER_TEST_WGPU:-0}" = "1" ]; then
  echo "FASTCOMPOSER_TEST_WGPU=1 but no Vulkan driver is installed" >&2
  exit 1
else
  echo "== (skipping the wgpu parity tests: no Vulkan driver; apt-get install mesa-vulkan-drivers)"
fi
echo "== browser: the wasm package, the demo end to end and the npm package (Debian Chromium)"
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  else
    echo "Chromium is missing: apt-get install chromium" >&2
    exit 1
  fi
fi
pkg-scripts/build-wasm.sh
(cd tests/browser && npm ci --no-audit --no-fund >/dev/null && npm test)

echo "== all tests passed"
