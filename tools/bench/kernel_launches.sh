#!/usr/bin/env bash
# Kernel launches per UNet forward on the wgpu device, by kind, from CubeCL's profiling log:
# one process runs 1 forward, another 3; the difference halved is one forward's launches
# (kernel compilation and autotuning, which happen in both, cancel out).
#   tools/bench/kernel_launches.sh [fastcomposer binary] [bench-unet options...]
# Default: target/release/fastcomposer, --config sd15 --latent 8 --batch 2 (what the counts in
# BENCHMARKS.md used; the number of launches barely depends on the latent size).
set -euo pipefail
BIN=${1:-target/release/fastcomposer}
shift || true
OPTS=("$@")
[ ${#OPTS[@]} -gt 0 ] || OPTS=(--config sd15 --latent 8 --batch 2)
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
export CUBECL_AUTOTUNE_LEVEL=${CUBECL_AUTOTUNE_LEVEL:-minimal}
dir=$(mktemp -d)
for it in 1 3; do
  CUBECL_DEBUG_OPTION=profile CUBECL_DEBUG_LOG="$dir/p$it.log" \
    "$BIN" bench-unet --device wgpu --iters "$it" "${OPTS[@]}" > "$dir/p$it.json"
done
# A launch is a line `| <duration> | <kernel>_<hash>` or `| <duration> | <kind> | <details>...`.
# CubeCL's own device probes for autotuning (launch overhead, memory and compute throughput) are
# not the model's work and vary from run to run: left out.
count() {
  awk -F'|' 'NF >= 3 && $2 ~ /^ *[0-9.]+(ns|µs|us|ms|s) *$/ {
    k = $3; gsub(/^ +| +$/, "", k); sub(/_[0-9a-f]+$/, "", k)
    if (k !~ /^(LaunchOverhead|MemoryDirectThroughput|ComputeDirectThroughput)$/) n[k]++ }
    END { for (k in n) print k, n[k] }' "$1" | sort
}
count "$dir/p1.log" > "$dir/c1"
count "$dir/p3.log" > "$dir/c3"
echo "adapter: $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["adapter"])' "$dir/p3.json")"
echo "options: ${OPTS[*]}"
join -a1 -a2 -e0 -o 0,1.2,2.2 "$dir/c1" "$dir/c3" |
  awk '{ d = ($3 - $2) / 2; if (d != 0) { print d, $1; t += d } } END { print t, "TOTAL launches per forward" }' |
  sort -rn
rm -rf "$dir"
