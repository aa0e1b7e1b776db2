"""Read a fastcomposer bundle (GGUF, docs/bundle-format.md) back into float arrays.

Used by `train.py restore` to go on training from a committed bundle when the training
checkpoints are gone (they live in an ignored folder). Independent of the Rust reader; the
formats it accepts are the ones `fastcomposer convert` writes: F32, F16, Q8_0, Q4_0.

Reads format versions 1 and 2 (version 1's quantized convolution kernels, stored 4-D, are
refused by gguf-py; version 2 stores them [out, in·k·k] with their shapes in
`fastcomposer.tensor_shapes`).
"""

import json

import struct

import numpy as np

GGUF_TYPES = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
F32, F16, Q4_0, Q8_0 = 0, 1, 2, 8


class _Cursor:
    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def take(self, fmt):
        v = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return v

    def string(self):
        n = self.take("<Q")
        s = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return s.decode("utf-8")

    def value(self, typ):
        if typ == 8:
            return self.string()
        if typ == 9:
            inner, n = self.take("<I"), self.take("<Q")
            if inner in GGUF_TYPES:  # numeric arrays in one go
                dt = np.dtype(GGUF_TYPES[inner])
                a = np.frombuffer(self.buf, dt, n, self.pos)
                self.pos += n * dt.itemsize
                return a
            return [self.value(inner) for _ in range(n)]
        return self.take(GGUF_TYPES[typ])


def _dequantize(raw, typ, n):
    if typ == F32:
        return np.frombuffer(raw, "<f4", n).copy()
    if typ == F16:
        return np.frombuffer(raw, "<f2", n).astype(np.float32)
    if typ == Q8_0:
        blocks = np.frombuffer(raw, np.uint8, n // 32 * 34).reshape(-1, 34)
        d = blocks[:, :2].copy().view("<f2").astype(np.float32)
        q = blocks[:, 2:].copy().view(np.int8).astype(np.float32)
        return (q * d).reshape(-1)
    if typ == Q4_0:
        blocks = np.frombuffer(raw, np.uint8, n // 32 * 18).reshape(-1, 18)
        d = blocks[:, :2].copy().view("<f2").astype(np.float32)
        b = blocks[:, 2:]
        q = np.concatenate([b & 0x0F, b >> 4], axis=1).astype(np.float32) - 8
        return (q * d).reshape(-1)
    raise ValueError(f"unknown tensor type {typ}")


def _byte_size(typ, n):
    return {F32: 4 * n, F16: 2 * n, Q8_0: n // 32 * 34, Q4_0: n // 32 * 18}[typ]


def read_bundle(path):
    """-> (metadata dict, {tensor name: float32 array in the reference shape})."""
    with open(path, "rb") as f:
        buf = memoryview(f.read())
    c = _Cursor(buf)
    if bytes(buf[:4]) != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file")
    c.pos = 4
    if c.take("<I") != 3:
        raise ValueError(f"{path}: GGUF version is not 3")
    n_tensors, n_kv = c.take("<Q"), c.take("<Q")
    meta = {}
    for _ in range(n_kv):
        key = c.string()
        meta[key] = c.value(c.take("<I"))
    infos = []
    for _ in range(n_tensors):
        name = c.string()
        dims = [c.take("<Q") for _ in range(c.take("<I"))]
        typ, off = c.take("<I"), c.take("<Q")
        infos.append((name, dims[::-1], typ, off))
    align = int(meta.get("general.alignment", 32))
    start = (c.pos + align - 1) // align * align
    shapes = json.loads(meta.get("fastcomposer.tensor_shapes", "{}"))
    tensors = {}
    for name, shape, typ, off in infos:
        n = int(np.prod(shape))
        raw = buf[start + off:start + off + _byte_size(typ, n)]
        full = shapes.get(name, shape)
        if int(np.prod(full)) != n:
            raise ValueError(f"{path}: tensor {name} is stored as {shape}, which does not hold {full}")
        tensors[name] = _dequantize(raw, typ, n).reshape(full)
    return meta, tensors


def component(tensors, prefix):
    """The tensors of one component (`unet`, `vae`, ...) with the prefix stripped."""
    p = prefix + "."
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}
