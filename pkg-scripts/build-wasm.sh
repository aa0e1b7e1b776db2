#!/usr/bin/env bash
# Builds the wasm package into pkg/: the crate for wasm32-unknown-unknown, wasm-bindgen (CLI
# pinned to the exact library version in Cargo.lock, installed from crates.io if missing),
# wasm-opt when Debian's binaryen is installed, the JS API, its types and the default model.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || true
version=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/version = |"/, ""); print; exit}' Cargo.lock)
if [ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $version" ]; then
  echo "installing wasm-bindgen-cli $version (matches Cargo.lock)"
  cargo install wasm-bindgen-cli --version "$version"
fi
cargo build --profile wasm-release --target wasm32-unknown-unknown -p fastcomposer --lib --no-default-features
rm -rf pkg && mkdir -p pkg
wasm=target/wasm32-unknown-unknown/wasm-release/fastcomposer.wasm
# wasm-opt runs before wasm-bindgen: Debian's binaryen (108) breaks the externref table that
# wasm-bindgen sets up when it runs after it.
if command -v wasm-opt >/dev/null; then
  if wasm-opt -O2 --enable-simd --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext \
      --enable-mutable-globals --enable-reference-types --enable-multivalue "$wasm" -o target/fastcomposer.opt.wasm; then
    wasm=target/fastcomposer.opt.wasm
  else
    echo "(wasm-opt failed; using the unoptimised wasm)"
  fi
fi
wasm-bindgen --target web --no-typescript --remove-name-section --out-dir pkg --out-name fastcomposer "$wasm"
cp web/pkg-src/package.json web/pkg-src/index.js web/pkg-src/index.d.ts web/pkg-src/worker.js web/pkg-src/README.md pkg/
ls -l pkg/fastcomposer_bg.wasm | awk '{printf "wasm: %.1f MB\n", $5/1e6}'
