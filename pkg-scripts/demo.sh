#!/usr/bin/env bash
# Builds the wasm package and serves the web demo with the embedded default model on
# http://127.0.0.1:$PORT/ (default 8080). Installs what it needs: the wasm32 target and the
# wasm-bindgen CLI matching Cargo.lock (from crates.io). Needs Node.js for the static server.
set -euo pipefail
cd "$(dirname "$0")/.."
pkg-scripts/build-wasm.sh
PORT="${PORT:-8080}"
echo "demo: open http://127.0.0.1:${PORT}/ (Ctrl-C to stop)"
exec node pkg-scripts/serve.mjs --root web --map /pkg/=pkg --map /models/=models --port "$PORT"
