"""Self-subject attention (DreamTuner) written from its formula (docs/method.md, "Self-subject
attention") on diffusers' UNet with our own attention processors, and its fixtures.

Per denoising step at timestep t, for subjects j = 1..k (reference latents z_j, mask m_j):

    reference pass:  the UNet on  sqrt(abar_t) z_j + sqrt(1 - abar_t) eps_j  (each repeated for
                     the B rows of the conditioning, same conditioning), recording every
                     self-attention layer's input r (what attn1 receives, after norm1);
    generated pass:  each self-attention layer attends over [x ; r_1 ; ... ; r_k] with the
                     scores of r_j's tokens raised by  ln(w * area_resize(m_j, layer grid)).

z_j is the VAE encoder's mean (times the scaling factor) of the photo padded to a square and
resized to the model's native size, as subject photos are; m_j the photo's mask (255 where no
mask is given, 0 on the padding bars) resized the same way to the latent grid. eps_j comes from
our PCG32 generator seeded with the bitwise NOT of the generation's seed (ported here).

The model is the tiny random-weight one of the pipeline fixtures; subjects are its real photos,
one with a mask this script draws. Writes crate/tests/fixtures/self_attention/:
  chelsea_mask.png, case<k>.json / case<k>.safetensors (initial latents, final latents).
Run:  tools/.venv/bin/fc-self-attention-ref
"""

import math
import os
import shutil

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, CLIPVisionModelWithProjection

from fctools.reference.common import FIXTURES, save_json
from fctools.reference.fastcomposer_ref import Fuser
from fctools.reference.pipeline_ref import CLIP_MEAN, CLIP_STD, pad_to_square
from fctools.reference.tokenizer_corpus import MARKER, hf_tokenizer, marker_reference

torch.set_grad_enabled(False)

MODEL = os.path.join(FIXTURES, "pipeline", "model")
PHOTOS = os.path.join(FIXTURES, "pipeline", "photos")
OUT = os.path.join(FIXTURES, "self_attention")
SIZE = 64  # the fixture model's native size
MIN_WEIGHT = np.finfo(np.float32).tiny  # ln of it stands for ln(0)


# ----------------------------------------------------------------------------- our RNG
class Pcg32:
    """crate/src/rng.rs: PCG32 (XSH RR), uniform (0, 1] from 53 bits, Box-Muller."""
    MASK = (1 << 64) - 1

    def __init__(self, seed):
        self.state = 0
        self.next_u32()
        self.state = (self.state + seed) & self.MASK
        self.next_u32()

    def next_u32(self):
        old = self.state
        self.state = (old * 6364136223846793005 + 1442695040888963407) & self.MASK
        x = (((old >> 18) ^ old) >> 27) & 0xFFFFFFFF
        rot = old >> 59
        return ((x >> rot) | (x << ((32 - rot) & 31))) & 0xFFFFFFFF

    def next_f64(self):
        hi = self.next_u32() >> 5
        lo = self.next_u32() >> 6
        return ((hi << 26 | lo) + 1.0) / float(1 << 53)

    def normals(self, n):
        out = []
        while len(out) < n:
            u1, u2 = self.next_f64(), self.next_f64()
            r = math.sqrt(-2.0 * math.log(u1))
            th = 2.0 * math.pi * u2
            out += [r * math.cos(th), r * math.sin(th)]
        return torch.tensor(np.array(out[:n], dtype=np.float32))


# ----------------------------------------------------------------------------- photos
def resize_u8(img, size):
    """[C, H, W] uint8 -> padded to a square, antialiased bilinear to size x size, rounded."""
    x = pad_to_square(img)
    x = F.interpolate(x[None].float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    return x.round().clamp(0, 255)


def masked_for_clip(photo, mask):
    """crate/src/pipeline/preprocess.rs apply_mask: background (mask < 128) -> PCG32(0x5EED) bytes."""
    if mask is None:
        return photo
    rng = Pcg32(0x5EED)
    h, w, _ = photo.shape
    noise = np.array([rng.next_u32() & 0xFF for _ in range(3 * h * w)], dtype=np.uint8).reshape(h, w, 3)
    out = photo.copy()
    out[mask < 128] = noise[mask < 128]
    return out


def clip_pixels(photo):
    x = resize_u8(torch.from_numpy(photo).permute(2, 0, 1).contiguous(), 224) / 255.0
    return (x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]


def reference(vae, photo, mask):
    px = resize_u8(torch.from_numpy(photo).permute(2, 0, 1).contiguous(), SIZE) / 127.5 - 1.0
    z = vae.encode(px[None]).latent_dist.mean[0] * vae.config.scaling_factor
    m = np.full(photo.shape[:2], 255, np.uint8) if mask is None else mask
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    mm = resize_u8(torch.from_numpy(np.stack([m] * 3)), SIZE // f)[0] / 255.0
    return z, mm


# ----------------------------------------------------------------------------- attention
class Reference:
    def __init__(self, strength, masks):
        self.strength = strength
        self.masks = masks  # [k] of [h, w]
        self.mode = "off"
        self.store = {}


class SelfSubjectProcessor:
    """attn1: records its input (reference pass) or attends over [x ; references] with the bias."""

    def __init__(self, name, ref):
        self.name, self.ref = name, ref

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        x = hidden_states
        b, l, c = x.shape
        ref = self.ref
        extra, bias = None, None
        if ref.mode == "record":
            ref.store[self.name] = x
        elif ref.mode == "apply":
            r = ref.store[self.name]
            k = len(ref.masks)
            extra = r.reshape(k, b, l, c).transpose(0, 1).reshape(b, k * l, c)
            h0, w0 = ref.masks[0].shape
            hl = next(math.ceil(h0 / 2 ** j) for j in range(8) if math.ceil(h0 / 2 ** j) * math.ceil(w0 / 2 ** j) == l)
            wl = l // hl
            weights = torch.cat([F.adaptive_avg_pool2d(m[None, None], (hl, wl)).flatten() for m in ref.masks])
            bias = torch.cat([torch.zeros(l), torch.log(torch.clamp(ref.strength * weights, min=MIN_WEIGHT))])
        kv = x if extra is None else torch.cat([x, extra], 1)
        heads = attn.heads
        split = lambda t: t.reshape(b, -1, heads, t.shape[-1] // heads).transpose(1, 2)
        q, key, val = split(attn.to_q(x)), split(attn.to_k(kv)), split(attn.to_v(kv))
        o = F.scaled_dot_product_attention(q, key, val, attn_mask=None if bias is None else bias[None, None, None])
        o = o.transpose(1, 2).reshape(b, l, -1)
        return attn.to_out[1](attn.to_out[0](o))


# ----------------------------------------------------------------------------- pipeline
CASES = [
    dict(prompt=f"a cat {MARKER} on the beach", subjects=["chelsea"], masks=[None], strength=1.0,
         guidance=5.0, alpha=0.5, seed=3),
    dict(prompt=f"a woman {MARKER} and a cat {MARKER} in the snow", subjects=["astronaut", "chelsea"],
         masks=[None, "chelsea_mask.png"], strength=2.0, guidance=1.0, alpha=1.0, seed=4),
]
STEPS = 3


def chelsea_mask():
    """An ellipse around the cat's head in the chelsea fixture photo (150 x 100)."""
    w, h = Image.open(os.path.join(PHOTOS, "chelsea.png")).size
    yy, xx = np.mgrid[0:h, 0:w]
    inside = ((xx - 0.55 * w) / (0.3 * w)) ** 2 + ((yy - 0.5 * h) / (0.45 * h)) ** 2 <= 1
    Image.fromarray((inside * 255).astype(np.uint8)).save(os.path.join(OUT, "chelsea_mask.png"))


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    chelsea_mask()
    text = CLIPTextModel.from_pretrained(os.path.join(MODEL, "text_encoder"), torch_dtype=torch.float32).eval()
    vision = CLIPVisionModelWithProjection.from_pretrained(os.path.join(MODEL, "image_encoder"), torch_dtype=torch.float32).eval()
    unet = UNet2DConditionModel.from_pretrained(os.path.join(MODEL, "unet"), torch_dtype=torch.float32).eval()
    vae = AutoencoderKL.from_pretrained(os.path.join(MODEL, "vae"), torch_dtype=torch.float32).eval()
    fuser = Fuser(text.config.hidden_size).eval()
    fuser.load_state_dict({k: v.float() for k, v in load_file(os.path.join(MODEL, "fuser", "model.safetensors")).items()})
    sched = DDIMScheduler.from_pretrained(os.path.join(MODEL, "scheduler"))
    tok = hf_tokenizer()
    tok.add_tokens([MARKER], special_tokens=True)
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    for c_idx, c in enumerate(CASES):
        photos = [np.array(Image.open(os.path.join(PHOTOS, f"{s}.png")).convert("RGB")) for s in c["subjects"]]
        masks = [None if m is None else np.asarray(Image.open(os.path.join(OUT, m)).convert("L")) for m in c["masks"]]
        embeds = vision(pixel_values=torch.stack([clip_pixels(masked_for_clip(p, m)) for p, m in zip(photos, masks)])).image_embeds
        refs = [reference(vae, p, m) for p, m in zip(photos, masks)]
        r = marker_reference(tok, c["prompt"])
        text_only = text(input_ids=torch.tensor([r["input_ids"]])).last_hidden_state
        negative = text(input_ids=torch.tensor([marker_reference(tok, "")["input_ids"]])).last_hidden_state
        augmented = text_only.clone()
        pos = torch.tensor(r["subject_positions"])
        augmented[0, pos] = fuser(text_only[0, pos], embeds)

        ref = Reference(c["strength"], [m for _, m in refs])
        unet.set_attn_processor({name: (SelfSubjectProcessor(name, ref) if ".attn1." in name else proc)
                                 for name, proc in unet.attn_processors.items()})
        k = len(refs)
        z = torch.stack([z for z, _ in refs])  # [k, C, h, w]
        noise = Pcg32(~c["seed"] & Pcg32.MASK).normals(z.numel()).reshape(z.shape)
        g = torch.Generator().manual_seed(2000 + c_idx)
        latents = torch.randn((1, 4, SIZE // f, SIZE // f), generator=g)
        sched.set_timesteps(STEPS)
        switch = int((1 - c["alpha"]) * STEPS)
        x = latents * sched.init_noise_sigma
        abar = sched.alphas_cumprod
        for i, t in enumerate(sched.timesteps):
            cond = text_only if i <= switch else augmented
            cond = torch.cat([negative, cond]) if c["guidance"] > 1 else cond
            bsz = cond.shape[0]
            zt = abar[t].sqrt() * z + (1 - abar[t]).sqrt() * noise
            ref.mode = "record"
            unet(zt.repeat_interleave(bsz, 0), t, encoder_hidden_states=cond.repeat(k, 1, 1))
            ref.mode = "apply"
            e = unet(torch.cat([x] * bsz), t, encoder_hidden_states=cond).sample
            if bsz == 2:
                eu, ec = e.chunk(2)
                e = eu + c["guidance"] * (ec - eu)
            ref.mode, ref.store = "off", {}
            x = sched.step(e, t, x).prev_sample
        save_json(os.path.join(OUT, f"case{c_idx}.json"), dict(c, steps=STEPS, width=SIZE, height=SIZE, scheduler="ddim"))
        save_file({"latents": latents, "final_latents": x.contiguous()}, os.path.join(OUT, f"case{c_idx}.safetensors"))
        print(f"case{c_idx}: {c['prompt']!r} w={c['strength']}: |latents| max {x.abs().max():.3f}")


if __name__ == "__main__":
    main()
