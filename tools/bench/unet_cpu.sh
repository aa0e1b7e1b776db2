#!/usr/bin/env bash
# UNet forward on the CPU: this crate (burn flex device) vs PyTorch CPU (diffusers), same
# machine, same run, same configs. Needs tools/.venv (tools/reference/requirements.txt).
#   tools/bench/unet_cpu.sh [iters]        -> prints JSON lines
# Batch 2 (CFG); latents 32×32 and 64×64 (512×512 px) for SD1.5, ours with f32 and int8 weights.
set -euo pipefail
cd "$(dirname "$0")/../.."
iters="${1:-3}"
cargo build --release --bin fastcomposer >/dev/null
bin=target/release/fastcomposer
py=tools/.venv/bin/python
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
for run in "tiny 32" "sd15 32" "sd15 64"; do
  set -- $run
  $bin bench-unet --config "$1" --batch 2 --latent "$2" --iters "$iters"
  [ "$1" = sd15 ] && $bin bench-unet --config "$1" --batch 2 --latent "$2" --iters "$iters" --weights int8
  $py tools/bench/unet_torch.py --config "$1" --batch 2 --latent "$2" --iters "$iters"
done
