#!/usr/bin/env bash
# The SD1.5-size UNet (random weights, built-in SD1.5 config; no bundle or Python model needed)
# computed in f16 against the same UNet in f32 on the wgpu device: one forward each on the same
# seeded inputs (`bench-unet --iters 0 --out`), then the outputs compared (relative L2, max abs
# error over the largest value, non-finite count). Checks that f16 compute — what
# `--precision auto` picks on adapters with shader-f16 — neither overflows nor drifts at full
# width and depth. Slow check for issue 7, not a CI test.
#   tools/bench/sd15_unet_f16.sh [latent=16] [weights=int8]
#       (needs a Vulkan device with shaderFloat16 — without a GPU: mesa-vulkan-drivers, lavapipe
#        — and python3 with numpy and safetensors)
# Env: FASTCOMPOSER_BIN (a built CLI; default: cargo build --release here).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${FASTCOMPOSER_BIN:-target/release/fastcomposer}
[ -n "${FASTCOMPOSER_BIN:-}" ] || cargo build --release --bin fastcomposer >/dev/null
latent=${1:-16}
weights=${2:-int8}
out=${TMPDIR:-/tmp}/fastcomposer_unet_f16
mkdir -p "$out"
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc --all) cores; latent ${latent}x${latent}, batch 2, $weights weights"
for dt in f16 f32; do
  RUST_BACKTRACE=0 CUBECL_AUTOTUNE_LEVEL=${CUBECL_AUTOTUNE_LEVEL:-minimal} "$bin" bench-unet --config sd15 \
    --latent "$latent" --batch 2 --iters 0 --device wgpu --weights "$weights" --dtype $dt \
    --out "$out/$dt.safetensors" 2>"$out/$dt.err" || { tail -3 "$out/$dt.err"; exit 1; }
done
python3 - "$out" <<'PY'
import sys
import numpy as np
from safetensors.numpy import load_file
d = sys.argv[1]
a = load_file(f"{d}/f16.safetensors")["out"].astype(np.float64)
b = load_file(f"{d}/f32.safetensors")["out"].astype(np.float64)
print(f"f16 vs f32, output {list(a.shape)}: relative L2 {np.linalg.norm(a - b) / np.linalg.norm(b):.2e}, "
      f"max abs error {np.abs(a - b).max():.2e} = {np.abs(a - b).max() / np.abs(b).max():.2e} of max |f32| "
      f"{np.abs(b).max():.3f}, non-finite in f16: {int((~np.isfinite(a)).sum())}")
PY
