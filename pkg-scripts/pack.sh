#!/usr/bin/env bash
# Packs the npm package (pkg/ must be built: pkg-scripts/build-wasm.sh) into dist/.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p dist
(cd pkg && npm pack --pack-destination ../dist)
