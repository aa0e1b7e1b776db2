#!/usr/bin/env bash
# Builds and serves the web demo. Until the web demo lands (issue 6), this builds the native
# CLI and shows what it can do.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin fastcomposer
echo
echo "The web demo is not built yet. The native CLI is at target/release/fastcomposer:"
./target/release/fastcomposer --help
echo
./target/release/fastcomposer tokenize "a man <|image|> and a cat <|image|> on the beach"
