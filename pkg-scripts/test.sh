#!/usr/bin/env bash
# Runs every test of the project: the Rust tests (CPU device; and wgpu where a Vulkan device
# exists), then the wasm build and the browser tests (demo end to end, npm package) in Chromium.
# Installs what it needs: the wasm32 target, wasm-bindgen-cli (pinned), npm dev dependencies, and
# Debian's chromium when run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each stage's wall time, printed as it ends and again as a table at the end (BENCHMARKS.md's
# CI table comes from these lines).
started=$SECONDS stage_started=$SECONDS stage_name="" timings=""
stage() {
  if [ -n "$stage_name" ]; then
    timings+="$(printf '%6d s  %s' $((SECONDS - stage_started)) "$stage_name")"$'\n'
    echo "== ($stage_name: $((SECONDS - stage_started)) s)"
  fi
  stage_name="$1" stage_started=$SECONDS
  [ -n "$1" ] && echo "== $1"
  return 0
}

stage "rust: fmt"
cargo fmt --all -- --check

stage "rust: build (release profile: the CLI, the library and every test binary)"
cargo test --release --workspace --no-run

# The wasm package builds in the background (its own target directories, so the two cargo runs
# do not wait for each other's lock) while the Rust tests run: they leave most of the second
# core idle (one test at a time on lavapipe). Its output: target/build-wasm.log.
pkg-scripts/build-wasm.sh > target/build-wasm.log 2>&1 &
wasm_build=$!
trap 'kill $wasm_build 2>/dev/null || true' EXIT

stage "rust: tests (CPU device)"
cargo test --release --workspace

# What only a GPU device computes — the WGSL kernels: every component against the reference
# fixtures, the quantized kernels, f16 compute and the flash attention kernels in a whole
# generation — again on burn's wgpu device, where a Vulkan device exists (`apt-get install
# mesa-vulkan-drivers` gives lavapipe, a software one; CI installs it). The device-independent
# tests (schedulers, residency, tokenizer, files) ran above on the CPU device. Minimal autotuning:
# every candidate kernel is otherwise timed for every new shape on lavapipe's software cores
# (the kernel chosen is checked either way). Checks at full SD1.5 scale take minutes here and
# are run by hand: tools/bench/slow_checks.sh (BENCHMARKS.md, "CI time").
# FASTCOMPOSER_TEST_WGPU=1 makes a missing Vulkan device an error instead of a skip.
if ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1; then
  stage "rust: component, quantized, f16 and flash-attention tests on wgpu (Vulkan)"
  export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
  export CUBECL_AUTOTUNE_LEVEL=minimal
  # Whole generations from an int8 bundle with burn's flash attention kernels: the sliced one's.
  FASTCOMPOSER_TEST_DEVICE=wgpu cargo test --release --test suite -- --test-threads 1 \
    parity:: quantized_ops:: bundle::fused_attention_generates
  # f16 compute (what precision auto picks where the adapter has shader-f16; lavapipe has it)
  # against the same fixtures, in its own process: burn fixes a device's float type once.
  # FASTCOMPOSER_TEST_F16=1 makes a device without f16 an error instead of a skip.
  FASTCOMPOSER_TEST_DEVICE=wgpu cargo test --release --test half_precision -- --test-threads 1
elif [ "${FASTCOMPOSER_TEST_WGPU:-0}" = "1" ]; then
  echo "FASTCOMPOSER_TEST_WGPU=1 but no Vulkan driver is installed" >&2
  exit 1
else
  echo "== (skipping the wgpu parity tests: no Vulkan driver; apt-get install mesa-vulkan-drivers)"
fi
stage "browser: Debian Chromium"
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  else
    echo "Chromium is missing: apt-get install chromium" >&2
    exit 1
  fi
fi
stage "wasm: the package (build-wasm.sh: WebGPU + CPU module, threaded CPU module; the rest of it)"
wasm_ok=0
wait $wasm_build || wasm_ok=$?
trap - EXIT
cat target/build-wasm.log
[ "$wasm_ok" = 0 ] || { echo "pkg-scripts/build-wasm.sh failed ($wasm_ok)" >&2; exit 1; }
stage "browser: the demo end to end and the npm package"
(cd tests/browser && npm ci --no-audit --no-fund >/dev/null && npm test)
stage ""

printf '== stage times\n%s%6d s  in all\n' "$timings" $((SECONDS - started))
echo "== all tests passed"
