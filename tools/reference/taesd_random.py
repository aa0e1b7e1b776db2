"""A random-weight TAESD (diffusers `AutoencoderTiny`, its default config: SD1.5's 4 latent
channels) as a diffusers-layout directory, for timing the tiny decoder at SD1.5 size
(`convert --tiny-vae`); written to tools/.data/taesd_random/ (not committed)."""

import os
import sys

import torch
from diffusers import AutoencoderTiny

OUT = os.path.join(os.path.dirname(__file__), "..", ".data", "taesd_random")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else OUT
    torch.manual_seed(0)
    m = AutoencoderTiny()
    m.save_pretrained(out)
    print("wrote", out, sum(p.numel() for p in m.parameters()) / 1e6, "M params")


if __name__ == "__main__":
    main()
