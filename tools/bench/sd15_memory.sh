#!/usr/bin/env bash
# Device-memory peaks of one full 512x512 generation (1 DDIM step with CFG: UNet batch 2; one
# subject; VAE decode) with the SD1.5-size random-weight bundles (int8, int4) on the wgpu device,
# as wgpu's allocator reports them (`generate --memory-report`: reserved, allocated, largest
# buffer, after each stage). Slow check for issue 7, not a CI test.
#   tools/bench/sd15_memory.sh [auto|resident|sequential] [int8 int4]
#       (run tools/bench/sd15_sizes.sh first; needs a Vulkan device — without a GPU:
#        apt-get install mesa-vulkan-drivers (lavapipe)). auto = sequential at this size.
# CUBECL_AUTOTUNE_LEVEL=minimal keeps autotuning (whose benchmark runs are part of the peaks on
# a first run) short on a software device.
# Env: FASTCOMPOSER_BIN (a built CLI; default: cargo build --release here); GENERATE_ARGS (more
# `generate` flags, e.g. "--attention-mib 64", or "--precision f32": generate's default, auto,
# computes in f16 on adapters with shader-f16 — lavapipe and NVIDIA's have it — and the peaks
# in BENCHMARKS.md before 2026-11-29 are of f32 runs).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${FASTCOMPOSER_BIN:-target/release/fastcomposer}
[ -n "${FASTCOMPOSER_BIN:-}" ] || cargo build --release --bin fastcomposer >/dev/null
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc --all) cores"
mode=${1:-auto}
shift || true
for q in ${@:-int8 int4}; do
  timer=()
  [ -x /usr/bin/time ] && timer=(/usr/bin/time -f "$q: %e s wall, %M KiB peak RSS")
  b=tools/.data/sd15_$q.gguf
  [ -f "$b" ] || { echo "$b is missing: run tools/bench/sd15_sizes.sh" >&2; exit 1; }
  echo "== $q, --memory $mode ${GENERATE_ARGS:-}"
  RUST_BACKTRACE=0 CUBECL_AUTOTUNE_LEVEL=${CUBECL_AUTOTUNE_LEVEL:-minimal} "${timer[@]}" \
    "$bin" generate --model "$b" \
    --prompt "a cat <|image|> on the beach" --subject crate/tests/fixtures/pipeline/photos/chelsea.png \
    --steps 1 --seed 0 --device wgpu --memory "$mode" --memory-report ${GENERATE_ARGS:-} --out "tools/.data/sd15_wgpu_$q.png" 2>&1 |
    grep --line-buffered -v -E "XDG_RUNTIME_DIR|^Can.t have an error when submitting a task" || true
done
