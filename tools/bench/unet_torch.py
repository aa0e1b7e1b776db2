"""PyTorch CPU (diffusers) UNet forward timing, the peer of `fastcomposer bench-unet`.

  python unet_torch.py --config sd15|tiny --latent 32 --batch 2 --iters 3 [--threads N]
Prints one JSON line like the Rust command. Random weights (diffusers' default init).
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="sd15")
    ap.add_argument("--latent", type=int, default=32)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    # UNet2DConditionModel() defaults are SD1.5's config.
    m = UNet2DConditionModel(**(TINY if a.config == "tiny" else {})).eval()
    load_s = time.perf_counter() - t0
    ch = m.config.in_channels
    d = m.config.cross_attention_dim
    sample = torch.randn(a.batch, ch, a.latent, a.latent)
    ctx = torch.randn(a.batch, 77, d)
    t = torch.full((a.batch,), 500.0)
    times = []
    for _ in range(a.iters + 1):
        t0 = time.perf_counter()
        m(sample, t, encoder_hidden_states=ctx)
        times.append((time.perf_counter() - t0) * 1e3)
    rest = times[1:] or times
    print(json.dumps({
        "config": a.config, "latent": a.latent, "batch": a.batch, "device": "torch-cpu",
        "threads": torch.get_num_threads(), "load_s": load_s, "first_ms": times[0],
        "mean_ms": sum(rest) / len(rest), "iters": len(times) - 1,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
