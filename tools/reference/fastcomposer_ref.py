"""FastComposer's own parts, written from shared/docs/METHOD.md (not from anyone's source):
the fuser ("postfuse" MLP) and, for the pipeline parity fixtures, the marker handling and the
delayed-conditioning loop on top of diffusers / transformers components."""

import torch
from torch import nn


class Mlp(nn.Module):
    """fc2(GELU(fc1(LayerNorm(x)))), exact GELU, LayerNorm eps 1e-5, optional residual."""

    def __init__(self, d_in: int, d_out: int, hidden: int, residual: bool):
        super().__init__()
        self.layernorm = nn.LayerNorm(d_in, eps=1e-5)
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, d_out)
        self.residual = residual

    def forward(self, x):
        h = self.fc2(nn.functional.gelu(self.fc1(self.layernorm(x))))
        return h + x if self.residual else h


class Fuser(nn.Module):
    """fuse(t, v): h = mlp1([t, v]) + t ; h = mlp2(h) ; LayerNorm(h)."""

    def __init__(self, embed_dim: int):
        super().__init__()
        d = embed_dim
        self.mlp1 = Mlp(2 * d, d, d, residual=False)
        self.mlp2 = Mlp(d, d, d, residual=True)
        self.layer_norm = nn.LayerNorm(d, eps=1e-5)

    def forward(self, text, image):
        h = self.mlp1(torch.cat([text, image], dim=-1)) + text
        return self.layer_norm(self.mlp2(h))
