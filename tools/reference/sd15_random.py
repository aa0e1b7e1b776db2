"""A random-weight FastComposer at full SD1.5 size, as a diffusers-layout directory (f16), for
size and memory checks of the converter and loader. ~2.7 GB; written to tools/.data/sd15_random/
(not committed). Configs: diffusers' UNet2DConditionModel / AutoencoderKL defaults for SD1.5,
CLIP ViT-L/14 text and vision towers, fuser embed_dim 768.
"""

import json
import os
import sys

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

from fctools.reference.fastcomposer_ref import Fuser

OUT = os.path.join(os.path.dirname(__file__), "..", ".data", "sd15_random")


def save(sub, model, config=None, fname="model.safetensors"):
    d = os.path.join(OUT, sub)
    os.makedirs(d, exist_ok=True)
    if config is None:
        model.save_pretrained(d)  # writes config.json (+ weights, replaced below)
        for f in os.listdir(d):
            if f.endswith(".safetensors"):
                os.remove(os.path.join(d, f))
    else:
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(config, f)
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, os.path.join(d, fname))
    print(sub, sum(p.numel() for p in model.parameters()) / 1e6, "M params", flush=True)
    del model


def main():
    global OUT
    if len(sys.argv) > 1:
        OUT = sys.argv[1]
    torch.set_grad_enabled(False)
    save("text_encoder", CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu")))
    save("image_encoder", CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=224,
        patch_size=14, projection_dim=768, hidden_act="quick_gelu")))
    save("fuser", Fuser(768), {"embed_dim": 768})
    save("unet", UNet2DConditionModel(cross_attention_dim=768), fname="diffusion_pytorch_model.safetensors")
    save("vae", AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512),
        fname="diffusion_pytorch_model.safetensors")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
