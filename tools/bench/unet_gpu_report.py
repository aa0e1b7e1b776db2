"""The table for tools/bench/unet_gpu.sh: reads its JSON lines and the outputs bench-unet wrote.

  python unet_gpu_report.py unet_gpu.jsonl out_dir
Achieved TFLOP/s = PyTorch's FLOP count of the same forward (FlopCounterMode: matmuls,
convolutions, attention) / the measured time; the fp32 peak is the card's non-tensor-core rate.
"""

import json
import os
import sys

import numpy as np
from safetensors.numpy import load_file

# NVIDIA datasheets, FP32 (non-tensor) TFLOP/s.
FP32_PEAK = {"H200": 67.0, "H100 80GB HBM3": 67.0, "H100 SXM": 67.0, "H100 PCIe": 51.0, "H100 NVL": 60.0}


def kernels(row):
    """The kernel language of one of our runs, from its adapter line ("...; kernels wgpu<spirv>")."""
    adapter = row.get("adapter") or ""
    return adapter.rsplit("kernels ", 1)[1].rstrip(")") if "kernels " in adapter else "wgpu"


def main():
    log, out = sys.argv[1], sys.argv[2]
    rows = [json.loads(line) for line in open(log) if line.startswith("{")]
    torch = {r["dtype"]: r for r in rows if r["device"].startswith("torch")}
    ours = [r for r in rows if not r["device"].startswith("torch")]
    gpu = next((r.get("gpu") for r in torch.values() if r.get("gpu")), "")
    peak = float(os.environ.get("FP32_PEAK_TFLOPS", 0)) or next(
        (v for k, v in FP32_PEAK.items() if k in gpu), 0.0)
    gflop = next((r["gflop"] for r in torch.values() if "gflop" in r), None)
    base = torch.get("fp16", {}).get("mean_ms")
    print(f"GPU: {gpu}; fp32 peak {peak} TFLOP/s; {gflop and round(gflop, 1)} GFLOP per forward")
    if ours:
        print(f"wgpu adapter: {ours[0].get('adapter')}")
    print("| run | mean ms/step (min) | first (load+tune) | vs PyTorch fp16 | TFLOP/s | % of fp32 peak |")
    print("|---|---|---|---|---|---|")
    for name, r in [(f"PyTorch {v['device'][6:].upper()} {k} (diffusers)", v) for k, v in sorted(torch.items())] + [
        (f"ours, {kernels(r)}, weights {r['weights']}, compute {r['dtype']}, "
         f"attention {r.get('attention', 'sliced')}", r) for r in ours
    ]:
        ms = r["mean_ms"]
        tf = gflop / ms if gflop else float("nan")  # GFLOP / ms = TFLOP/s
        pct = f"{100 * tf / peak:.0f} %" if peak else "?"
        ratio = f"{ms / base:.2f}×" if base else "?"
        mn = r.get("min_ms")
        if r.get("nonfinite"):
            name += f" (**{r['nonfinite']} non-finite outputs**)"
        print(f"| {name} | {ms:.1f}{f' ({mn:.1f})' if mn else ''} | {r['first_ms'] / 1e3:.1f} s | "
              f"{ratio} | {tf:.1f} | {pct} |")

    def load(w, d, a="sliced"):
        p = os.path.join(out, f"burn_{w}_{d}{'' if a == 'sliced' else '_' + a}.safetensors")
        return load_file(p)["out"] if os.path.exists(p) else None

    for a, b in [(("f32", "f16"), ("f32", "f32")), (("int8", "f16"), ("int8", "f32")),
                 (("int8", "f32"), ("f32", "f32")), (("f32", "f16", "fused"), ("f32", "f16"))]:
        x, y = load(*a), load(*b)
        if x is None or y is None:
            continue
        err = float(np.abs(x - y).max() / np.abs(y).max())
        rms = float(np.sqrt(np.mean((x - y) ** 2)) / np.sqrt(np.mean(y**2)))
        print(f"output {'/'.join(a)} vs {'/'.join(b)}: max |diff| / max |ref| = {err:.2e}, "
              f"relative RMS = {rms:.2e}")


if __name__ == "__main__":
    main()
