#!/usr/bin/env bash
# The SD1.5 UNet step on a GPU (issue 7): this crate natively on burn-wgpu (Vulkan) against PyTorch
# CUDA (diffusers) on the same machine in the same run. 64×64 latent (512×512 px), CFG batch 2,
# 77-token context, random weights (the speed of a forward does not depend on their values).
#   tools/bench/unet_gpu.sh [iters] [out_dir]
# Env: FASTCOMPOSER_BIN  a built CLI (default: cargo build --release here)
#      PYTHON            a Python with CUDA PyTorch and diffusers (default python3)
#      FP32_PEAK_TFLOPS  the card's fp32 (non-tensor) peak (default: from the GPU's name)
#      STEP_TIMEOUT      seconds allowed per bench-unet run (default 240)
#      TORCH_DTYPES      PyTorch runs (default "fp16 fp32"; "" for none)
#      BURN_RUNS         our runs as weights:dtype[:attention] (default "int8:f32 int8:f16 f32:f16
#                        f32:f32"; attention sliced (default) or fused: burn's flash kernels)
#      CONFIG, LATENT, TORCH_DEVICE  (default sd15, 64, cuda; for trying the script without a GPU)
# Ours, each: --weights int8|f32 (int8: Q8_0 blocks as a bundle stores them, dequantized before
# each use) × --dtype f32|f16 (f16: the device's default float type, weights and activations).
# Then tools/bench/unet_gpu_report.py prints the table (ms/step, ratio to PyTorch fp16, achieved
# TFLOP/s from PyTorch's FLOP count) and how far the f16 and int8 outputs are from the f32 ones.
set -uo pipefail
cd "$(dirname "$0")/../.."
iters=${1:-10}
out=${2:-/tmp/unet_gpu}
mkdir -p "$out"
bin=${FASTCOMPOSER_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release --bin fastcomposer >/dev/null || exit 1
  bin=target/release/fastcomposer
fi
py=${PYTHON:-python3}
log=$out/unet_gpu.jsonl
: >"$log"
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null), $(nproc) cores" | tee "$out/machine.txt"
for dt in ${TORCH_DTYPES-fp16 fp32}; do
  "$py" tools/bench/unet_torch.py --device "${TORCH_DEVICE:-cuda}" --dtype "$dt" \
    --config "${CONFIG:-sd15}" --latent "${LATENT:-64}" --batch 2 \
    --iters "$iters" --flops 2>"$out/torch_$dt.err" | tee -a "$log" ||
    echo "torch $dt failed: $(tail -3 "$out/torch_$dt.err")"
done
for wd in ${BURN_RUNS:-int8:f32 int8:f16 f32:f16 f32:f32}; do
  IFS=: read -r w d a <<<"$wd"
  a=${a:-sliced}
  name=burn_${w}_${d}$([ "$a" = sliced ] || echo "_$a")
  RUST_BACKTRACE=0 timeout "${STEP_TIMEOUT:-240}" "$bin" bench-unet --config "${CONFIG:-sd15}" \
    --latent "${LATENT:-64}" \
    --batch 2 --iters "$iters" --device wgpu --weights "$w" --dtype "$d" --attention "$a" \
    --out "$out/$name.safetensors" 2>"$out/$name.err" | tee -a "$log" ||
    echo "bench-unet --weights $w --dtype $d --attention $a failed: $(grep -v XDG_RUNTIME "$out/$name.err" | tail -3)"
done
"$py" tools/bench/unet_gpu_report.py "$log" "$out"
