"""The default model's architecture and data conventions, shared by training (`train.py`) and the
evaluations (`fctools.eval`): hyper-parameters, the model set, the autoencoder, pixel and
attribute conventions. Importing it builds nothing and reads no data."""

import json
import os

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

from fctools.dataset import scenes
from fctools.reference.fastcomposer_ref import Fuser

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", ".data", "train")
"""Where `train.py` keeps its checkpoints, logs and exported model unless told otherwise (`--dir`)."""
CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]

D = 128  # text width = fuser = image projection = UNet cross-attention
HP = {
    "seed": 0,
    "n_scenes": 24000,
    "image_size": scenes.SIZE,
    # 8 latent channels (the first default model had SD1.5's 4): more of the subjects' detail survives
    "vae": dict(block_out_channels=[16, 32, 64, 64], layers_per_block=1, latent_channels=8, norm_num_groups=8),
    "vae_steps": 3000, "vae_batch": 8, "vae_lr": 5e-4, "vae_kl": 1e-6,
    # Reconstruction loss weight on the subjects' pixels (1 elsewhere): the identity is in them.
    "vae_subject_weight": 5.0,
    "decoder_steps": 3000, "decoder_batch": 16, "decoder_lr": 2e-4, "decoder_latent_noise": 0.1,
    "text_encoder": dict(vocab_size=49408, hidden_size=D, intermediate_size=256, num_hidden_layers=3,
                         num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu"),
    "image_encoder": dict(hidden_size=D, intermediate_size=256, projection_dim=D, num_hidden_layers=3,
                          num_attention_heads=4, image_size=scenes.REF_SIZE, patch_size=16, hidden_act="quick_gelu"),
    "unet": dict(sample_size=16, block_out_channels=[64, 128, 192], layers_per_block=1,
                 down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                 up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                 cross_attention_dim=D, attention_head_dim=4, norm_num_groups=32),
    "vision_steps": 1500, "vision_batch": 128, "vision_lr": 1e-3, "vision_trainable_layers": 2,
    "fc_batch": 32, "fc_lr": 3e-4, "fc_warmup": 300, "fc_weight_decay": 0.01, "ema": 0.999,
    "subject_dropout": 0.1, "caption_dropout": 0.1, "masked_loss_p": 0.5, "localization_weight": 1e-3,
    "grad_clip": 1.0,
    # Few-step distillation (stage `lcd`): teacher guidance, solver grid (LCMScheduler's
    # original_inference_steps), share of text-only conditionings, Huber constant, target EMA.
    "lcd_guidance": 5.0, "lcd_ddim_steps": 50, "lcd_text_only": 0.3, "lcd_huber_c": 0.001,
    "lcd_target_ema": 0.95, "lcd_batch": 32, "lcd_lr": 1e-4, "lcd_warmup": 100,
}


def latent_width(vae_state):
    """The latent channels of a VAE state dict (8 now; the first default model's: 4)."""
    return vae_state["quant_conv.weight"].shape[0] // 2


def load_data(out=DEFAULT_OUT):
    """The rendered training scenes (stage `data`) from `out`."""
    d = np.load(os.path.join(out, "scenes.npz"))
    with open(os.path.join(out, "captions.json")) as f:
        c = json.load(f)
    return d, c


def to_m11(x_uint8):
    """[N, H, W, 3] uint8 -> [N, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(x_uint8).permute(0, 3, 1, 2).float() / 127.5 - 1


def make_vae():
    return AutoencoderKL(in_channels=3, out_channels=3, sample_size=scenes.SIZE,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         **HP["vae"])


ATTRIBUTES = {"cls": scenes.CLASSES, "color": scenes.COLOR_NAMES, "secondary": scenes.COLOR_NAMES,
              "pattern": scenes.PATTERNS, "accessory": scenes.ACCESSORIES}


def attribute_labels(identity_indices):
    """{attribute: LongTensor} of the identities' class and attributes."""
    return {a: torch.tensor([vals.index(getattr(scenes.IDENTITIES[i], a)) for i in identity_indices])
            for a, vals in ATTRIBUTES.items()}


def ref_pixels(refs_uint8):
    """[N, S, S, 3] uint8 (already square, at the encoder's size) -> normalised."""
    x = torch.from_numpy(refs_uint8).permute(0, 3, 1, 2).float() / 255.0
    return (x - CLIP_MEAN) / CLIP_STD


class Models(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.text = CLIPTextModel(CLIPTextConfig(**HP["text_encoder"]))
        self.vision = CLIPVisionModelWithProjection(CLIPVisionConfig(**HP["image_encoder"]))
        self.fuser = Fuser(D)
        lc = HP["vae"]["latent_channels"]
        self.unet = UNet2DConditionModel(in_channels=lc, out_channels=lc, **HP["unet"])
