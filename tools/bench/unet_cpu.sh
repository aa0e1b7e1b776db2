#!/usr/bin/env bash
# UNet forward on the CPU: this crate (burn flex device) vs PyTorch CPU (diffusers), same
# machine, same run, same configs. Needs tools/.venv (tools/reference/requirements.txt).
#   tools/bench/unet_cpu.sh [iters]        -> prints JSON lines and a small table
set -euo pipefail
cd "$(dirname "$0")/../.."
iters="${1:-3}"
cargo build --release --bin fastcomposer >/dev/null
bin=target/release/fastcomposer
py=tools/.venv/bin/python
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
for cfg in tiny sd15; do
  for batch_latent in "2 32"; do
    set -- $batch_latent
    $bin bench-unet --config "$cfg" --batch "$1" --latent "$2" --iters "$iters"
    $py tools/bench/unet_torch.py --config "$cfg" --batch "$1" --latent "$2" --iters "$iters"
  done
done
