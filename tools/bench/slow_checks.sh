#!/usr/bin/env bash
# The slow checks: correctness at full scale that takes minutes on a software GPU, so it is run
# by hand (and on a lent GPU), not in CI. Each is an `#[ignore]`d test of crate/tests/suite/ or
# crate/tests/half_precision.rs;
# this runs them on the wgpu device (lavapipe where there is no GPU) and on the CPU device.
#   tools/bench/slow_checks.sh [test-name filters...]
# BENCHMARKS.md ("CI time") lists them with their last run.
set -euo pipefail
cd "$(dirname "$0")/../.."
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
for device in wgpu cpu; do
  echo "== slow checks on the $device device"
  FASTCOMPOSER_TEST_DEVICE=$device cargo test --release --test suite -- --ignored --test-threads 1 "$@"
done
# f16 (its own test binary; it needs a GPU device: lavapipe here).
echo "== slow f16 checks on the wgpu device"
FASTCOMPOSER_TEST_DEVICE=wgpu cargo test --release --test half_precision -- --ignored --test-threads 1 "$@"
# The conditioning controls and self-subject attention on the wgpu device (in CI they run on the
# CPU device only: about 3 minutes on lavapipe, mostly compiling its kernels).
if [ $# -eq 0 ]; then
  echo "== controls (sliders, suppression, self-subject attention) on the wgpu device"
  FASTCOMPOSER_TEST_DEVICE=wgpu CUBECL_AUTOTUNE_LEVEL=minimal cargo test --release --test suite -- --test-threads 1 controls::
fi
