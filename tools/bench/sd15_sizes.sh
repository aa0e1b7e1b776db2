#!/usr/bin/env bash
# Bundle sizes and converter peak memory for an SD1.5-size FastComposer (random weights).
#   tools/bench/sd15_sizes.sh [modes...]   (default: int8 int4 mixed f16; needs tools/.venv;
#                                          writes ~2.7 GB + bundles under tools/.data/)
# Env: PYTHON (default tools/.venv/bin/python), FASTCOMPOSER_BIN (default: cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=tools/.data/sd15_random
[ -f "$dir/unet/diffusion_pytorch_model.safetensors" ] || "${PYTHON:-tools/.venv/bin/python}" tools/reference/sd15_random.py "$dir"
bin=${FASTCOMPOSER_BIN:-target/release/fastcomposer}
[ -n "${FASTCOMPOSER_BIN:-}" ] || cargo build --release --bin fastcomposer >/dev/null
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc --all) cores"
du -b -c "$dir"/*/*.safetensors | tail -1 | awk '{printf "source (f16 safetensors): %.3f GB\n", $1/1e9}'
timer=()
[ -x /usr/bin/time ] && timer=(/usr/bin/time -f "%M KiB peak RSS, %e s")
for q in ${@:-int8 int4 mixed f16}; do
  out=tools/.data/sd15_$q.gguf
  "${timer[@]}" "$bin" convert --from "$dir" --quant $q --out "$out" 2>&1 | tail -2
  stat -c "%s" "$out" | awk -v q=$q '{printf "%s bundle: %.3f GB\n", q, $1/1e9}'
done
