"""What a LoRA given at load costs (issue 25): a kohya LoRA of rank R on every matrix of a bundle's
UNet and text encoder (linear layers and convolutions; not the token or position embeddings),
written from the bundle's own names and shapes, then `fastcomposer generate --steps 1` with and
without it (`load_s` of its timings line: the bundle read, the LoRA merged into the quantized
weights, the models built), the median of N runs each. Merging at load is the only way built;
a side branch would cost per step instead (see docs/method.md).

    tools/.venv/bin/python tools/bench/lora_load.py [--model models/default.gguf] [--rank 16] [--runs 5]
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import tempfile

import numpy as np
from safetensors.numpy import save_file

from fctools.bundle_io import read_bundle

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def make_lora(bundle, rank, path):
    _, tensors = read_bundle(bundle)
    rng = np.random.default_rng(0)
    out, n, params = {}, 0, 0
    for name, w in tensors.items():
        part = "unet." if name.startswith("unet.") else "text_encoder." if name.startswith("text_encoder.") else None
        if part is None or not name.endswith(".weight") or w.ndim < 2 or "embedding" in name:
            continue
        module = name[len(part):-len(".weight")]
        flat = ("lora_unet_" if part == "unet." else "lora_te_") + module.replace(".", "_")
        k = int(np.prod(w.shape[1:]))
        r = min(rank, w.shape[0], k)
        out[f"{flat}.lora_down.weight"] = (rng.standard_normal((r, *w.shape[1:])) / np.sqrt(k)).astype(np.float32)
        out[f"{flat}.lora_up.weight"] = (rng.standard_normal((w.shape[0], r, *([1] * (w.ndim - 2)))) * 0.01).astype(np.float32)
        out[f"{flat}.alpha"] = np.array(r, np.float32)
        n += 1
        params += w.size
    save_file(out, path)
    return n, params


def load_seconds(cli, model, lora, runs):
    times = []
    for i in range(runs):
        args = [cli, "generate", "--model", model, "--prompt", "a cat in the snow", "--steps", "1", "--seed", str(i),
                "--latents-out", os.path.join(tempfile.gettempdir(), "fc-lora-load.safetensors")]
        if lora:
            args += ["--lora", lora]
        err = subprocess.run(args, capture_output=True, text=True, check=True).stderr
        times.append(json.loads(re.search(r"timings: (\{.*\})", err).group(1))["load_s"])
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "default.gguf"))
    ap.add_argument("--cli", default=os.path.join(ROOT, "target", "release", "fastcomposer"))
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    path = os.path.join(tempfile.gettempdir(), f"fc-lora-r{a.rank}.safetensors")
    n, params = make_lora(a.model, a.rank, path)
    base = load_seconds(a.cli, a.model, None, a.runs)
    merged = load_seconds(a.cli, a.model, path, a.runs)
    print(json.dumps({"model": os.path.relpath(a.model, ROOT), "rank": a.rank, "modules": n, "weights_touched": params,
                      "lora_bytes": os.path.getsize(path), "load_s": base, "load_with_lora_s": merged,
                      "merge_s": round(merged - base, 3), "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
