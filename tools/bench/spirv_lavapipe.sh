#!/usr/bin/env bash
# The `spirv` build (kernels compiled to SPIR-V by CubeCL's Vulkan compiler instead of WGSL) on a
# software Vulkan device, to check its results where no GPU is lent. Slow check, not a CI test.
#   tools/bench/spirv_lavapipe.sh [cargo test filters...]   (default: --test parity --test quantized_ops)
#
# Two things stand between lavapipe and that build, and this script works around both for its
# own run only (nothing in the repository changes; Cargo.lock is restored afterwards):
#   - Debian 12's lavapipe (Mesa 22.3.6) lacks features CubeCL's SPIR-V uses well; Mesa 25.0.7
#     from bookworm-backports is unpacked under $MESA (not installed) and used through
#     VK_DRIVER_FILES.
#   - Neither lavapipe has VK_KHR_workgroup_memory_explicit_layout, and without it cubecl-spirv
#     0.11.3 declares shared memory with swapped types (invalid SPIR-V: the driver crashes on
#     burn's matmul). The crate refuses such an adapter in a `spirv` build (device.rs,
#     `explicit_workgroup_layout`); NVIDIA's, AMD's and Intel's drivers have the extension. Here a
#     copy of cubecl-spirv with the two types put back in place is patched in through cargo's
#     --config, with FASTCOMPOSER_ALLOW_IMPLICIT_SMEM=1 to let the adapter through.
# Takes long: lavapipe compiles SPIR-V much more slowly than WGSL (the tiny UNet's first forward:
# ~400 s on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/../.."
MESA=${MESA:-/tmp/mesa25}
if [ ! -f "$MESA/lvp.json" ]; then
  mkdir -p /tmp/bpo/lists/partial /tmp/bpo/debs
  printf '%s\n' "deb http://deb.debian.org/debian bookworm-backports main" \
    "deb http://deb.debian.org/debian bookworm main" >/tmp/bpo/sources.list
  o="-oDir::Etc::SourceList=/tmp/bpo/sources.list -oDir::Etc::SourceParts=/dev/null -oDir::State::Lists=/tmp/bpo/lists"
  apt-get $o update >/dev/null
  (cd /tmp/bpo/debs && apt-get $o download mesa-vulkan-drivers/bookworm-backports \
    libdrm2/bookworm-backports libdrm-amdgpu1/bookworm-backports 2>&1 | grep -v unsandboxed || true)
  for f in /tmp/bpo/debs/*.deb; do dpkg -x "$f" "$MESA"; done
  sed "s|\"library_path\": *\"[^\"]*\"|\"library_path\": \"$MESA/usr/lib/x86_64-linux-gnu/libvulkan_lvp.so\"|" \
    "$MESA/usr/share/vulkan/icd.d/lvp_icd.json" >"$MESA/lvp.json"
fi
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
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp/xdg} VK_DRIVER_FILES=$MESA/lvp.json \
  LD_LIBRARY_PATH=$MESA/usr/lib/x86_64-linux-gnu CUBECL_AUTOTUNE_LEVEL=minimal \
  FASTCOMPOSER_TEST_DEVICE=wgpu FASTCOMPOSER_ALLOW_IMPLICIT_SMEM=1
mkdir -p "$XDG_RUNTIME_DIR"
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores; lavapipe from $MESA; cubecl-spirv patched from $fix"
cargo test --release --features spirv --config "patch.crates-io.cubecl-spirv.path=\"$fix\"" \
  ${@:---test parity --test quantized_ops} -- --test-threads 1
