"""FLOPs of the SD1.5 UNet forward (diffusers, batch 2, 64×64 latent, 77×768 context) and how many of
them are in convolutions, by kernel size, stride, channels and resolution (hooks on every
Conv2d; total from PyTorch's FlopCounterMode). Backs the convolution share quoted in BENCHMARKS.md.
    tools/.venv/bin/python tools/bench/conv_flops.py
"""
import torch
from diffusers import UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode


def main():
    u = UNet2DConditionModel(cross_attention_dim=768).eval()
    stats = {}
    def hook(m, i, o):
        x = i[0]
        k = m.kernel_size[0]
        key = (k, m.stride[0], x.shape[1], o.shape[1], x.shape[2])
        fl = 2 * o.numel() * x.shape[1] * k * k
        stats[key] = stats.get(key, (0, 0)); stats[key] = (stats[key][0] + 1, stats[key][1] + fl)
    for m in u.modules():
        if isinstance(m, torch.nn.Conv2d): m.register_forward_hook(hook)
    x = torch.randn(2, 4, 64, 64); c = torch.randn(2, 77, 768)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        u(x, 500, c)
    tot = fc.get_total_flops()
    c3 = sum(v[1] for k, v in stats.items() if k[0] == 3)
    c3s1 = sum(v[1] for k, v in stats.items() if k[0] == 3 and k[1] == 1)
    c1 = sum(v[1] for k, v in stats.items() if k[0] == 1)
    print(f"total {tot/1e9:.1f} GF, conv3 {c3/1e9:.1f} ({c3/tot:.0%}), conv3 stride1 {c3s1/1e9:.1f}, conv1 {c1/1e9:.1f}")
    byres = {}  # 3×3 stride-1 FLOPs per input resolution
    for k, v in sorted(stats.items()):
        print(k, v[0], f"{v[1]/1e9:.1f}")
        if k[0] == 3 and k[1] == 1: byres[k[4]] = byres.get(k[4], 0) + v[1]
    print({r: f"{f/1e9:.1f}" for r, f in byres.items()})


if __name__ == "__main__":
    main()
