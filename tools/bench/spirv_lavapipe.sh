#!/usr/bin/env bash
# The `spirv` build (kernels compiled to SPIR-V by CubeCL's Vulkan compiler instead of WGSL) on a
# software Vulkan device, to check its results where no GPU is lent. Slow check, not a CI test.
#   tools/bench/spirv_lavapipe.sh [cargo test args...]   (default: --test suite; test-name filters from SPIRV_FILTERS, default "parity:: quantized_ops::")
#
# lavapipe has no VK_KHR_workgroup_memory_explicit_layout, and without it cubecl-spirv 0.11.3
# declares shared memory with swapped types (invalid SPIR-V: lavapipe crashes on burn's matmul).
# The crate refuses such an adapter in a `spirv` build (device.rs, `explicit_workgroup_layout`);
# NVIDIA's, AMD's and Intel's drivers have the extension. For its own run only, this script
# patches in a copy of cubecl-spirv with the two types put back in place (through cargo's
# --config; nothing in the repository changes, Cargo.lock is restored afterwards) and sets
# FASTCOMPOSER_ALLOW_IMPLICIT_SMEM=1 to let the adapter through. Debian 12's lavapipe (Mesa
# 22.3.6) and bookworm-backports' (25.0.7; point VK_DRIVER_FILES at it) both run it.
# Takes long: lavapipe compiles SPIR-V more slowly than WGSL (the tiny UNet's first forward:
# 130–400 s on 2 cores against ~40 s).
set -euo pipefail
cd "$(dirname "$0")/../.."
src=$(ls -d "$HOME"/.cargo/registry/src/*/cubecl-spirv-0.11.3 | head -1)
fix=/tmp/cubecl-spirv-0.11.3-smem
if [ ! -d "$fix" ]; then
  cp -r "$src" "$fix"
  python3 - "$fix/src/ops/memory.rs" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
old = ("GlobalVariableOp::new(ctx, value_ty, StorageClass::Workgroup, name.clone(), None);",
       "let addr = AddressOfOp::new(ctx, ty, name);")
new = ("GlobalVariableOp::new(ctx, ty, StorageClass::Workgroup, name.clone(), None);",
       "let addr = AddressOfOp::new(ctx, value_ty, name);")
for o, n in zip(old, new):
    assert s.count(o) == 1, o
    s = s.replace(o, n)
open(p, "w").write(s)
PY
fi
cp Cargo.lock /tmp/Cargo.lock.spirv-backup
trap 'cp /tmp/Cargo.lock.spirv-backup Cargo.lock' EXIT
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp/xdg} CUBECL_AUTOTUNE_LEVEL=minimal \
  FASTCOMPOSER_TEST_DEVICE=wgpu FASTCOMPOSER_ALLOW_IMPLICIT_SMEM=1
mkdir -p "$XDG_RUNTIME_DIR"
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores; Vulkan ICD ${VK_DRIVER_FILES:-system}; cubecl-spirv patched from $fix"
cargo test --release --features spirv --config "patch.crates-io.cubecl-spirv.path=\"$fix\"" \
  ${@:---test suite} -- --test-threads 1 ${SPIRV_FILTERS-parity:: quantized_ops::}
