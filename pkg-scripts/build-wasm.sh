#!/usr/bin/env bash
# Builds the wasm package into pkg/: the crate for wasm32-unknown-unknown, wasm-bindgen (CLI
# pinned to the exact library version in Cargo.lock, installed from crates.io if missing),
# wasm-opt when Debian's binaryen is installed, the threaded CPU module (pkg/threads/, below), the
# JS API, its types and the default model.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || true
version=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/version = |"/, ""); print; exit}' Cargo.lock)
if [ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $version" ]; then
  echo "installing wasm-bindgen-cli $version (matches Cargo.lock)"
  cargo install wasm-bindgen-cli --version "$version"
fi
# FASTCOMPOSER_WASM_FEATURES adds crate features (`bench` for tools/bench/ops_browser.mjs; the
# npm package is built without).
features="webgpu${FASTCOMPOSER_WASM_FEATURES:+,$FASTCOMPOSER_WASM_FEATURES}"
t0=$SECONDS
# Its own target directory (as the threaded module's below), so that it can build while a native
# cargo run holds target/ (pkg-scripts/test.sh runs the Rust tests meanwhile).
cargo rustc --profile wasm-release --target wasm32-unknown-unknown -p fastcomposer --lib --crate-type cdylib \
  --no-default-features --features "$features" --target-dir target/wasm
rm -rf pkg && mkdir -p pkg
wasm=target/wasm/wasm32-unknown-unknown/wasm-release/fastcomposer.wasm
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
echo "wasm module (WebGPU + CPU): $((SECONDS - t0)) s"
# The threaded module (pkg/threads/, CPU device only): the CPU kernels on rayon, whose threads
# are Web Workers sharing the module's memory (wasm-bindgen-rayon). wasm threads need the
# standard library rebuilt with atomics, so this takes a pinned nightly with rust-src (installed
# here by rustup). Up to 4 GiB of shared memory (SD1.5-size bundles). The package falls back to
# the single-threaded module where a page is not cross-origin isolated.
# FASTCOMPOSER_WASM_THREADS=0 skips it (the package then always runs one thread).
if [ "${FASTCOMPOSER_WASM_THREADS:-1}" != 0 ]; then
  t0=$SECONDS
  nightly=${FASTCOMPOSER_NIGHTLY:-nightly-2026-05-20}
  rustup toolchain install "$nightly" --profile minimal --component rust-src --target wasm32-unknown-unknown >/dev/null 2>&1 ||
    rustup toolchain install "$nightly" --profile minimal --component rust-src --target wasm32-unknown-unknown
  # The linker flags make the memory shared and imported (the workers receive it) and export
  # what wasm-bindgen needs to set up each thread's stack and thread-local storage.
  link=(--shared-memory --import-memory --max-memory=4294967296 --export=__wasm_init_tls --export=__tls_size
    --export=__tls_align --export=__tls_base)
  RUSTFLAGS="-C target-feature=+atomics,+bulk-memory,+mutable-globals,+simd128 ${link[*]/#/-C link-arg=}" \
    cargo "+$nightly" rustc -Z build-std=panic_abort,std --profile wasm-release --target wasm32-unknown-unknown \
    -p fastcomposer --lib --crate-type cdylib --no-default-features --target-dir target/wasm-threads
  twasm=target/wasm-threads/wasm32-unknown-unknown/wasm-release/fastcomposer.wasm
  if command -v wasm-opt >/dev/null; then
    if wasm-opt -O2 --enable-simd --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext \
        --enable-mutable-globals --enable-reference-types --enable-multivalue --enable-threads \
        "$twasm" -o target/fastcomposer.threads.opt.wasm; then
      twasm=target/fastcomposer.threads.opt.wasm
    else
      echo "(wasm-opt failed on the threaded module; using it unoptimised)"
    fi
  fi
  wasm-bindgen --target web --no-typescript --remove-name-section --out-dir pkg/threads --out-name fastcomposer "$twasm"
  ls -l pkg/threads/fastcomposer_bg.wasm | awk '{printf "threaded wasm: %.1f MB\n", $5/1e6}'
  echo "threaded wasm module: $((SECONDS - t0)) s"
fi
cp web/pkg-src/package.json web/pkg-src/index.js web/pkg-src/index.d.ts web/pkg-src/protocol.js web/pkg-src/device.js web/pkg-src/worker.js \
  web/pkg-src/README.md pkg/
ls -l pkg/fastcomposer_bg.wasm | awk '{printf "wasm: %.1f MB\n", $5/1e6}'
