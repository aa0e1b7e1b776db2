"""Read a bundle with gguf-py (llama.cpp's GGUF reader, independent of this project) and check
that every tensor dequantizes to what this project's own readers see. A manual check of the
format's claim that other GGUF readers can list, size and decode every tensor.

    tools/.venv/bin/python tools/reference/check_gguf_interop.py models/default.gguf
"""

import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

from fctools.bundle_io import read_bundle


def main(path=None):
    path = path or sys.argv[1]
    r = GGUFReader(path)  # raises on tensors that break ggml's layout rules
    f = r.fields["fastcomposer.tensor_shapes"]
    shapes = json.loads(bytes(f.parts[f.data[0]]).decode())
    _, ours = read_bundle(path)
    worst = 0.0
    for t in r.tensors:
        v = dequantize(t.data, t.tensor_type).astype(np.float32)
        v = v.reshape(shapes.get(t.name, list(reversed([int(d) for d in t.shape]))))
        worst = max(worst, float(np.abs(v - ours[t.name]).max()))
    print(f"{path}: gguf-py read {len(r.tensors)} tensors ({len(shapes)} stored flattened); "
          f"largest difference from bundle_io {worst:g}")
    if worst != 0.0:
        raise SystemExit("mismatch")


if __name__ == "__main__":
    main()
