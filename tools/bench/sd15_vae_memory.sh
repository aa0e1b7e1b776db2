#!/usr/bin/env bash
# Device-memory peak of the SD1.5 VAE decoder alone at 512x512 (latents 1x4x64x64) on the wgpu
# device: `forward --component vae-decoder --device wgpu --memory-report` with the random-weight
# SD1.5 VAE (f16 file, f32 on the device: an upper bound for a bundle's int8 VAE weights). The
# decode stage of a generation runs this same decoder (row bands above the 128 MiB buffer budget);
# measuring it alone skips the UNet step, which takes ~35 minutes on a software Vulkan device.
# The output is then compared with diffusers' AutoencoderKL.decode on the same weights and latents
# (tools/.venv). Slow check for issue 7, not a CI test.
#   tools/bench/sd15_vae_memory.sh      (run tools/bench/sd15_sizes.sh first; needs a Vulkan
#                                        device — without a GPU: mesa-vulkan-drivers, lavapipe)
# Env: FASTCOMPOSER_BIN (a built CLI; default: cargo build --release here), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${FASTCOMPOSER_BIN:-target/release/fastcomposer}
[ -n "${FASTCOMPOSER_BIN:-}" ] || cargo build --release --bin fastcomposer >/dev/null
vae=tools/.data/sd15_random/vae
[ -f "$vae/diffusion_pytorch_model.safetensors" ] || { echo "$vae is missing: run tools/bench/sd15_sizes.sh" >&2; exit 1; }
latents=tools/.data/sd15_vae_latents.safetensors
"${PYTHON:-tools/.venv/bin/python}" - "$latents" <<'PY'
import sys, torch
from safetensors.torch import save_file
save_file({"latents": torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(0))}, sys.argv[1])
PY
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc --all) cores"
timer=()
[ -x /usr/bin/time ] && timer=(/usr/bin/time -f "%e s wall, %M KiB peak RSS")
RUST_BACKTRACE=0 CUBECL_AUTOTUNE_LEVEL=${CUBECL_AUTOTUNE_LEVEL:-minimal} "${timer[@]}" \
  "$bin" forward --component vae-decoder --config "$vae/config.json" \
  --weights "$vae/diffusion_pytorch_model.safetensors" --inputs "$latents" \
  --out tools/.data/sd15_vae_out.safetensors --device wgpu --memory-report 2>&1 |
  grep --line-buffered -v -E "XDG_RUNTIME_DIR|^Can.t have an error when submitting a task" || true
"${PYTHON:-tools/.venv/bin/python}" - "$vae" "$latents" tools/.data/sd15_vae_out.safetensors <<'PY'
import sys, numpy as np, torch
from diffusers import AutoencoderKL
from safetensors.numpy import load_file
torch.set_num_threads(2)
vae = AutoencoderKL.from_pretrained(sys.argv[1], torch_dtype=torch.float32).eval()
with torch.no_grad():
    ref = vae.decode(torch.from_numpy(load_file(sys.argv[2])["latents"])).sample.numpy()
ours = load_file(sys.argv[3])["out"]
print(f"vs diffusers: max abs diff {np.abs(ours - ref).max():.3g} (largest value {np.abs(ref).max():.3g})")
PY
