"""Shared helpers for the reference scripts: deterministic random weights, saving fixtures."""

import json
import math
import os

import torch
from safetensors.torch import save_file

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURES = os.path.join(REPO, "crate", "tests", "fixtures")


def randomize(model: torch.nn.Module, seed: int, half_exact: bool = False) -> None:
    """Re-draw every parameter so that each layer matters in the output.

    Default inits leave norms at 1/0 and some projections tiny; a fixture must catch a wrong
    norm or a skipped bias, so norms get 1 + 0.1·N(0,1), biases 0.1·N(0,1) and weights
    N(0, 1/fan_in). With ``half_exact`` every value is rounded to an f16-representable one,
    so the weights can be stored as F16 without changing what the reference computed.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            shape = p.shape
            if p.ndim == 1 and ("norm" in name or "layrnorm" in name) and name.endswith("weight"):
                v = 1.0 + 0.1 * torch.randn(shape, generator=g)
            elif p.ndim == 1 and name.endswith("bias"):
                v = 0.1 * torch.randn(shape, generator=g)
            elif p.ndim == 1:  # e.g. CLIP's class_embedding
                v = torch.randn(shape, generator=g)
            elif "embedding" in name and p.ndim == 2:
                v = 0.5 * torch.randn(shape, generator=g)
            else:
                fan_in = math.prod(shape[1:])
                v = torch.randn(shape, generator=g) / math.sqrt(fan_in)
            if half_exact:
                v = v.half().float()
            p.copy_(v)


def save_tensors(path: str, tensors: dict, half: bool = False) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    out = {}
    for k, v in tensors.items():
        v = v.detach().contiguous()
        if half and v.is_floating_point():
            v = v.half()
        out[k] = v
    save_file(out, path)


def save_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True, ensure_ascii=False)
        f.write("\n")
