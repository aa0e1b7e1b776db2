"""End-to-end FastComposer inference reference on a tiny random-weight model, and its fixtures.

The components are the reference libraries' own classes (transformers CLIPTextModel and
CLIPVisionModelWithProjection, diffusers UNet2DConditionModel / AutoencoderKL / DDIM / PNDM);
FastComposer's own parts (fuser, marker handling, delayed subject conditioning, subject
preprocessing) are written from shared/docs/METHOD.md.

Writes crate/tests/fixtures/pipeline/:
  model/            a diffusers-layout model directory (text_encoder/, image_encoder/, fuser/,
                    unet/, vae/, scheduler/), weights f16-exact and stored as F16
  photos/           the real subject photos (scikit-image: astronaut, public domain; chelsea, CC0)
  preprocess.safetensors   pixel_values of each photo (METHOD.md preprocessing, float path) and
                    the same through torchvision's uint8 transforms, for comparison
  case<k>.json / case<k>.safetensors   options, initial latents, final latents, decoded image

Run:  tools/.venv/bin/python tools/reference/pipeline_ref.py
"""

import os
import shutil

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, PNDMScheduler, UNet2DConditionModel
from PIL import Image
from safetensors.torch import save_file
from skimage import data as skdata
from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

from fctools.reference.common import FIXTURES, randomize, save_json
from fctools.reference.fastcomposer_ref import Fuser
from fctools.reference.make_fixtures import SD15_SCHEDULER, saved_config
from fctools.reference.tokenizer_corpus import MARKER, hf_tokenizer, marker_reference

torch.set_grad_enabled(False)

OUT = os.path.join(FIXTURES, "pipeline")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
D = 32  # text hidden = fuser dim = image projection dim = UNet cross-attention dim


# ----------------------------------------------------------------------------- subjects
def pad_to_square(img: torch.Tensor) -> torch.Tensor:
    """[3, H, W] uint8 -> black bars of (long - short) // 2 on both sides of the short axis."""
    _, h, w = img.shape
    if h > w:
        p = (h - w) // 2
        return F.pad(img, (p, p, 0, 0), value=0)
    if w > h:
        p = (w - h) // 2
        return F.pad(img, (0, 0, p, p), value=0)
    return img


def preprocess(img: np.ndarray, size: int = 224) -> torch.Tensor:
    """METHOD.md: pad to square (black), resize to size x size bilinear with antialiasing,
    [0, 1], CLIP mean/std. The resize runs in float and is rounded back to uint8 (half to even),
    as an image pipeline on uint8 images does."""
    x = pad_to_square(torch.from_numpy(img).permute(2, 0, 1).contiguous())
    x = F.interpolate(x[None].float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    x = x.round().clamp(0, 255) / 255.0
    mean = torch.tensor(CLIP_MEAN)[:, None, None]
    std = torch.tensor(CLIP_STD)[:, None, None]
    return (x - mean) / std


def preprocess_torchvision(img: np.ndarray, size: int = 224) -> torch.Tensor:
    """The published inference's transform chain on a uint8 tensor (torchvision), for comparison."""
    import torchvision.transforms as T

    x = pad_to_square(torch.from_numpy(img).permute(2, 0, 1).contiguous())
    t = T.Compose([
        T.Resize((size, size), interpolation=T.InterpolationMode.BILINEAR, antialias=True),
        T.ConvertImageDtype(torch.float),
        T.Normalize(CLIP_MEAN, CLIP_STD),
    ])
    return t(x)


# ----------------------------------------------------------------------------- model
def build_model():
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=D, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, hidden_act="quick_gelu",
    )).eval()
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=48, intermediate_size=64, projection_dim=D, num_hidden_layers=2, num_attention_heads=4,
        image_size=224, patch_size=32, hidden_act="quick_gelu",
    )).eval()
    fuser = Fuser(D).eval()
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=D, attention_head_dim=4, norm_num_groups=16,
    ).eval()
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16), sample_size=64, scaling_factor=0.18215,
    ).eval()
    for k, m in enumerate([text, vision, fuser, unet, vae]):
        randomize(m, 300 + k, half_exact=True)
    return text, vision, fuser, unet, vae


def save_model(text, vision, fuser, unet, vae):
    root = os.path.join(OUT, "model")

    def put(sub, model, config, fname):
        d = os.path.join(root, sub)
        os.makedirs(d, exist_ok=True)
        save_json(os.path.join(d, "config.json"), config)
        save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, os.path.join(d, fname))

    put("text_encoder", text, saved_config(text), "model.safetensors")
    put("image_encoder", vision, saved_config(vision), "model.safetensors")
    put("fuser", fuser, {"embed_dim": D}, "model.safetensors")
    put("unet", unet, saved_config(unet), "diffusion_pytorch_model.safetensors")
    put("vae", vae, saved_config(vae), "diffusion_pytorch_model.safetensors")
    sched = DDIMScheduler(**{k: v for k, v in SD15_SCHEDULER.items() if k != "skip_prk_steps"})
    save_json(os.path.join(root, "scheduler", "scheduler_config.json"), dict(sched.config))


# ----------------------------------------------------------------------------- pipeline
def encode_text(tok, text_encoder, prompt):
    r = marker_reference(tok, prompt)
    if "error" in r:
        raise ValueError(r["error"])
    ids = torch.tensor([r["input_ids"]])
    return text_encoder(input_ids=ids).last_hidden_state, r["subject_positions"]


def fastcomposer(models, tok, prompt, negative, pixel_values, latents, steps, guidance, alpha, scheduler):
    text, vision, fuser, unet, vae = models
    # 1. the three conditionings
    text_only, positions = encode_text(tok, text, prompt)
    negative_embeds, _ = encode_text(tok, text, negative)
    assert len(positions) == pixel_values.shape[0]
    subject_embeds = vision(pixel_values=pixel_values).image_embeds  # [K, D]
    augmented = text_only.clone()
    pos = torch.tensor(positions)
    augmented[0, pos] = fuser(text_only[0, pos], subject_embeds)
    # 2. timesteps
    sched = (DDIMScheduler if scheduler == "ddim" else PNDMScheduler)(
        **{k: v for k, v in SD15_SCHEDULER.items() if k != ("skip_prk_steps" if scheduler == "ddim" else "clip_sample")})
    sched.set_timesteps(steps)
    switch = int((1 - alpha) * steps)
    # 3. denoising loop with delayed subject conditioning
    x = latents * sched.init_noise_sigma
    for i, t in enumerate(sched.timesteps):
        cond = text_only if i <= switch else augmented
        if guidance > 1:
            e = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([negative_embeds, cond])).sample
            eu, ec = e.chunk(2)
            e = eu + guidance * (ec - eu)
        else:
            e = unet(x, t, encoder_hidden_states=cond).sample
        x = sched.step(e, t, x).prev_sample
    # 4. decode
    image = vae.decode(x / vae.config.scaling_factor).sample
    return x, image


CASES = [
    # prompt, subjects, scheduler, guidance, alpha
    (f"a woman {MARKER} on the beach", ["astronaut"], "ddim", 5.0, 0.5),
    (f"a woman {MARKER} and a cat {MARKER} in the snow", ["astronaut", "chelsea"], "ddim", 5.0, 0.0),
    (f"a cat {MARKER} next to a woman {MARKER}", ["chelsea", "astronaut"], "pndm", 5.0, 1.0),
    (f"a cat {MARKER} sleeping in a forest", ["chelsea"], "pndm", 1.0, 0.5),
    (f"a woman {MARKER} and a cat {MARKER}", ["astronaut", "chelsea"], "ddim", 1.0, 1.0),
    (f"a photo of a cat {MARKER} and a cup {MARKER}", ["chelsea", "coffee"], "pndm", 5.0, 0.0),
]
STEPS = 6
NEGATIVE = "blurry, low quality"


def photos():
    """Small copies of two real photos, as PNG (what a user would drop in)."""
    d = os.path.join(OUT, "photos")
    os.makedirs(d, exist_ok=True)
    out = {}
    for name, size in [("astronaut", (128, 128)), ("chelsea", (150, 100)), ("coffee", (300, 200))]:
        img = Image.fromarray(getattr(skdata, name)()).resize(size, Image.BICUBIC)
        img.save(os.path.join(d, f"{name}.png"))
        out[name] = np.asarray(Image.open(os.path.join(d, f"{name}.png")).convert("RGB"))
    with open(os.path.join(d, "LICENSE.txt"), "w") as f:
        f.write(
            "astronaut.png: Eileen Collins, NASA (NASA Great Images database), public domain; via scikit-image.\n"
            "chelsea.png: the cat Chelsea, photo by Stefan van der Walt, CC0; via scikit-image.\n"
            "coffee.png: a cup of coffee, photo by Rachel Michetti, CC0; via scikit-image.\n"
            "Both downscaled with PIL (bicubic) by tools/reference/pipeline_ref.py.\n"
        )
    return out


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    models = build_model()
    save_model(*models)
    tok = hf_tokenizer()
    tok.add_tokens([MARKER], special_tokens=True)
    imgs = photos()
    pv = {k: preprocess(v) for k, v in imgs.items()}
    tv = {k: preprocess_torchvision(v) for k, v in imgs.items()}
    save_file({**{f"{k}": v for k, v in pv.items()}, **{f"{k}.torchvision": v for k, v in tv.items()}},
              os.path.join(OUT, "preprocess.safetensors"))
    for k in pv:
        print(f"{k}: METHOD float path vs torchvision uint8 path, max |diff| {(pv[k] - tv[k]).abs().max():.4f}")
    vae = models[4]
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    for c, (prompt, subjects, scheduler, guidance, alpha) in enumerate(CASES):
        g = torch.Generator().manual_seed(1000 + c)
        latents = torch.randn((1, 4, 64 // f, 64 // f), generator=g)
        pixel_values = torch.stack([pv[s] for s in subjects])
        final, image = fastcomposer(models, tok, prompt, NEGATIVE, pixel_values, latents, STEPS, guidance, alpha, scheduler)
        save_json(os.path.join(OUT, f"case{c}.json"), dict(
            prompt=prompt, negative_prompt=NEGATIVE, subjects=subjects, scheduler=scheduler,
            guidance=guidance, alpha=alpha, steps=STEPS, width=64, height=64))
        save_file({"latents": latents, "final_latents": final.contiguous(), "image": image.contiguous()},
                  os.path.join(OUT, f"case{c}.safetensors"))
        print(f"case{c}: {prompt!r} {scheduler} g={guidance} alpha={alpha}: |latents| max {final.abs().max():.3f}")


if __name__ == "__main__":
    main()
