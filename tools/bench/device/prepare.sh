#!/usr/bin/env bash
# Packs what a lent GPU machine (see the workplace's `device` tool) needs for the issue-7 checks
# into .devrun/ (git-ignored), small enough to travel with the working tree (64 MiB in all):
#   - the CLI twice, stripped, each as xz of everything except the embedded default model (the
#     binary holds models/default.gguf verbatim; the tree carries that file anyway, run.sh splices
#     it back): the default build (kernels in WGSL, what a browser runs) as rest.xz, and the
#     `spirv` build (CubeCL's SPIR-V compiler on Vulkan: cooperative matrices) as rest-spirv.xz,
#   - diffusers from tools/.venv without its pipelines (the UNet/VAE classes are all that is used),
#   - Debian's Vulkan loader and libglvnd (the NVIDIA Vulkan ICD needs libGLdispatch).
# Then: device run `bash tools/bench/device/run.sh` with carry [".devrun"].
set -euo pipefail
cd "$(dirname "$0")/../../.."
grep -qx "/.devrun/" .git/info/exclude 2>/dev/null || echo "/.devrun/" >>.git/info/exclude
mkdir -p .devrun
pack() { # name: packs target/release/fastcomposer as .devrun/<name>.xz + <name>.splice
  python3 - "$1" <<'PY'
import hashlib, lzma, shutil, subprocess, sys
name = sys.argv[1]
shutil.copy("target/release/fastcomposer", "/tmp/fastcomposer.stripped")
subprocess.run(["strip", "/tmp/fastcomposer.stripped"], check=True)
b = open("/tmp/fastcomposer.stripped", "rb").read()
m = open("models/default.gguf", "rb").read()
i = b.find(m)
assert i > 0 and b.count(m[:4096]) == 1, "the embedded model was not found once"
open(f".devrun/{name}.xz", "wb").write(lzma.compress(b[:i] + b[i + len(m):], preset=9 | lzma.PRESET_EXTREME))
open(f".devrun/{name}.splice", "w").write(f"{i} {hashlib.sha256(b).hexdigest()}\n")
PY
}
cargo build --release --bin fastcomposer --features spirv
pack rest-spirv
cargo build --release --bin fastcomposer
pack rest
sp=$(tools/.venv/bin/python -c "import diffusers, os; print(os.path.dirname(os.path.dirname(diffusers.__file__)))")
rm -rf /tmp/dtrim && mkdir -p /tmp/dtrim
cp -r "$sp"/diffusers "$sp"/diffusers-*.dist-info "$sp"/importlib_metadata "$sp"/importlib_metadata-*.dist-info /tmp/dtrim/
rm -rf /tmp/dtrim/diffusers/pipelines /tmp/dtrim/diffusers/modular_pipelines
find /tmp/dtrim -name __pycache__ -prune -exec rm -rf {} +
tar -C /tmp/dtrim -cJf .devrun/diffusers.tar.xz .
mkdir -p /tmp/amd64/partial
o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
apt-get $o update >/dev/null
(cd .devrun && apt-get $o download libvulkan1 libglvnd0 libegl1 libgl1 libglx0 libopengl0 libgles2 2>&1 | grep -v unsandboxed || true)
du -sh .devrun
