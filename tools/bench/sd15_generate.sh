#!/usr/bin/env bash
# One full 512x512 generation (2 DDIM steps, CFG, one subject) with the SD1.5-size random-weight
# FastComposer bundles (int8 and int4) natively on the CPU device: loads, runs every component,
# decodes. Records wall time and peak RSS. Slow check for issue 7, not a CI test.
#   tools/bench/sd15_generate.sh      (run tools/bench/sd15_sizes.sh first: it writes the bundles)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --bin fastcomposer >/dev/null
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc --all) cores"
for q in int8 int4; do
  b=tools/.data/sd15_$q.gguf
  [ -f "$b" ] || { echo "$b is missing: run tools/bench/sd15_sizes.sh" >&2; exit 1; }
  /usr/bin/time -f "$q: %M KiB peak RSS, %e s wall" target/release/fastcomposer generate --model "$b" \
    --prompt "a cat <|image|> on the beach" --subject crate/tests/fixtures/pipeline/photos/chelsea.png \
    --steps 2 --seed 0 --out "tools/.data/sd15_$q.png" 2>&1 | grep -v "^\s*$" | tail -2
done
