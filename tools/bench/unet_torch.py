"""PyTorch (diffusers) UNet forward timing, the peer of `fastcomposer bench-unet`.

  python unet_torch.py --config sd15|tiny --latent 32 --batch 2 --iters 3 [--threads N]
                       [--device cpu|cuda] [--dtype fp32|fp16] [--flops]
Prints one JSON line like the Rust command. Random weights (diffusers' default init). On CUDA
each forward is timed to the end of its kernels (synchronize); `--flops` adds the forward's
floating-point operations as PyTorch's FlopCounterMode counts them (matmuls, convolutions,
attention; 2 per multiply-add).
"""

import argparse
import json
import resource
import time

import torch
from diffusers import UNet2DConditionModel

TINY = dict(
    block_out_channels=(32, 64), layers_per_block=2, sample_size=32,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
)

SD15 = dict(cross_attention_dim=768)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="sd15")
    ap.add_argument("--latent", type=int, default=32)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16"])
    ap.add_argument("--flops", action="store_true")
    a = ap.parse_args()
    dev = torch.device(a.device)
    dtype = torch.float16 if a.dtype == "fp16" else torch.float32

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    if a.threads:
        torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    # UNet2DConditionModel()'s defaults are SD1.5's config except the context width (1280 there,
    # 768 for SD1.5's CLIP ViT-L/14 text encoder and in `bench-unet --config sd15`).
    m = UNet2DConditionModel(**(TINY if a.config == "tiny" else SD15)).eval().to(dev, dtype)
    sync()
    load_s = time.perf_counter() - t0
    ch = m.config.in_channels
    d = m.config.cross_attention_dim
    sample = torch.randn(a.batch, ch, a.latent, a.latent).to(dev, dtype)
    ctx = torch.randn(a.batch, 77, d).to(dev, dtype)
    t = torch.full((a.batch,), 500.0, device=dev)
    times = []
    for _ in range(a.iters + 1):
        t0 = time.perf_counter()
        out = m(sample, t, encoder_hidden_states=ctx).sample
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    rest = times[1:] or times
    rec = {
        "config": a.config, "latent": a.latent, "batch": a.batch, "device": f"torch-{a.device}",
        "dtype": a.dtype, "threads": torch.get_num_threads(), "load_s": load_s,
        "first_ms": times[0], "mean_ms": sum(rest) / len(rest),
        "min_ms": min(rest), "iters": len(times) - 1,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch": torch.__version__, "nonfinite": int((~torch.isfinite(out)).sum()),
    }
    if dev.type == "cuda":
        rec["gpu"] = torch.cuda.get_device_name(dev)
        rec["peak_gpu_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
    if a.flops:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as fc:
            m(sample, t, encoder_hidden_states=ctx)
        rec["gflop"] = fc.get_total_flops() / 1e9
    print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
