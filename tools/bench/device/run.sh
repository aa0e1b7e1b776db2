#!/usr/bin/env bash
# On a lent GPU machine (after tools/bench/device/prepare.sh here): unpack .devrun/, then the
# issue-7 checks, cheapest and most wanted first, each bounded so one call fits its limit.
# Logs go to $OUT. The SD1.5-size bundles are written on cores 8-15 while the GPU benchmark runs
# pinned to cores 0-7. A fresh machine's first wgpu process spends ~80 s compiling kernels and
# autotuning the SD1.5 UNet; int8 needs more.
set -u
exec > >(tee -a "$OUT/run.log") 2>&1
T0=$SECONDS
el() { echo "[+$((SECONDS - T0)) s] $*"; }
python3 - <<'PY' || exit 1
import hashlib, lzma, os
i, h = open(".devrun/splice.txt").read().split()
rest = lzma.decompress(open(".devrun/rest.xz", "rb").read())
b = rest[: int(i)] + open("models/default.gguf", "rb").read() + rest[int(i):]
assert hashlib.sha256(b).hexdigest() == h, "spliced binary differs"
open("/tmp/fastcomposer", "wb").write(b)
os.chmod("/tmp/fastcomposer", 0o755)
PY
mkdir -p /tmp/site && tar -C /tmp/site -xJf .devrun/diffusers.tar.xz
for f in .devrun/*.deb; do dpkg -x "$f" /; done
ldconfig
export PYTHONPATH=/tmp/site FASTCOMPOSER_BIN=/tmp/fastcomposer PYTHON=python3 RUST_BACKTRACE=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
timeout 90 /tmp/fastcomposer bench-unet --config tiny --latent 8 --batch 1 --iters 1 --device wgpu 2>/dev/null | grep -q NVIDIA ||
  { el "no NVIDIA adapter through wgpu"; export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json; }
(taskset -c 8-15 tools/bench/sd15_sizes.sh int8 int4 >"$OUT/sizes.log" 2>&1) &
prep=$!
left() { echo $((${DEADLINE:-570} - (SECONDS - T0))); }
bench() { # out_dir torch_dtypes burn_runs
  local t; t=$(left)
  [ "$t" -gt 60 ] || { el "skip bench $3 (time)"; return; }
  el "bench torch=[$2] ours=[$3]"
  STEP_TIMEOUT=$((t - 60)) TORCH_DTYPES="$2" BURN_RUNS="$3" taskset -c 0-7 tools/bench/unet_gpu.sh 10 "$1"
  cp "$1/unet_gpu.jsonl" "$OUT/$(basename "$1").jsonl"
}
# PyTorch and our f16 run first (the GPU comparison), then the memory peaks (seconds each on a
# GPU), then int8 (longest autotuning) with what time is left.
bench /tmp/ug1 "fp16 fp32" "f32:f16"
# 3×3 convolutions: this crate's GPU kernel (stacked windows × kernel matrix) against burn's
# direct one, per SD1.5 level (bench-ops times both).
for dt in f16 f32; do
  [ "$(left)" -gt 150 ] || { el "skip conv ops $dt (time)"; continue; }
  el "conv ops $dt"
  timeout 100 taskset -c 0-7 /tmp/fastcomposer bench-ops --device wgpu --iters 10 --only conv \
    --dtype "$dt" >>"$OUT/ops_conv.jsonl" 2>/dev/null
done
wait $prep
el "bundles ready"
for run in "sequential int8" "sequential int4" "resident int8" "resident int4"; do
  [ "$(left)" -gt 90 ] || { el "skip memory $run (time)"; continue; }
  el "memory $run"
  timeout 80 tools/bench/sd15_memory.sh $run >>"$OUT/memory.log" 2>&1
  pkill -f /tmp/fastcomposer || true
done
bench /tmp/ug2 "" "int8:f32"
el end
