"""Train the embedded default model: a small FastComposer of the SD1.5 family, from scratch, on
the procedural scenes of tools/dataset/scenes.py. One command, resumable, CPU or GPU.

    tools/.venv/bin/python tools/train/train.py all --minutes 120 --cooldown-minutes 25

Stages (each resumes from its checkpoint under tools/.data/train/, or --dir):
  data     render the training scenes (identities outside the held-out set) into a cache
  vae      train the AutoencoderKL (factor 8: 128 px -> 16x16x8 latents; subjects weighted)
  latents  encode every scene once; the scaling factor is 1 / std of the latents
  decoder  fine-tune the VAE decoder alone on those fixed latents (sharper decoding)
  vision   pretrain the image encoder on the reference photos (our stand-in for the pretrained
           CLIP image encoder of the paper): linear heads on its projected embedding predict
           the subject's class and attributes; the heads are thrown away
  fc       train text encoder, image encoder, fuser and UNet together with FastComposer's
           recipe: subject dropout 0.1, caption dropout 0.1, masked denoising loss (p 0.5),
           cross-attention localisation loss (1e-3) on the middle blocks
  export   EMA weights -> a diffusers-layout directory (tools/.data/train/model/)
  restore  (not part of `all`) rebuild the checkpoints from bundles when they are lost: the
           models from a bundle's weights (EMA), the VAE encoder from a bundle written with
           `--keep-vae-encoder`; the optimiser starts afresh, with a new warm-up
Losses go to tools/.data/train/<stage>_log.csv; hyper-parameters to hparams.json.
No pretrained weights exist here, so unlike the paper the text encoder is trained too (jointly),
and the image encoder is pretrained here; as in the paper, fc then trains only its last
`vision_trainable_layers` layers (and projection).
"""

import argparse
import copy
import csv
import json
import math
import os
import random
import time

import numpy as np
import torch
import torch.nn.functional as F

from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from fctools.bundle_io import component, read_bundle
from fctools.dataset import scenes
from fctools.reference.tokenizer_corpus import MARKER, hf_tokenizer, marker_reference
from fctools.train.models import (
    ATTRIBUTES, D, DEFAULT_OUT, HP, Models, attribute_labels, latent_width, load_data,
    make_vae, ref_pixels, to_m11,
)

OUT = DEFAULT_OUT


def device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def log_row(path, row):
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


def resume(ck, model, opt, dev):
    """Load a stage's checkpoint into `model` and `opt` if there is one; the step to go on from."""
    if not os.path.exists(ck):
        return 0
    s = torch.load(ck, map_location=dev)
    model.load_state_dict(s["model"])
    opt.load_state_dict(s["opt"])
    return s["step"]


def warm_start(model, state, what):
    """Copy every tensor of `state` whose name and shape match into `model` (a run begun from an
    earlier model with other input/output widths); says what was left at its initialisation."""
    own = model.state_dict()
    same = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(same, strict=False)
    fresh = sorted(k for k in own if k not in same)
    print(f"{what}: warm start, {len(same)} of {len(own)} tensors copied; fresh: {fresh}", flush=True)


def rec_loss(rec, x, w):
    """The VAE's reconstruction loss (MSE + 0.5 L1), each pixel weighted by `w` [B, 1, H, W]."""
    d = rec - x
    return ((d ** 2 + 0.5 * d.abs()) * w).sum() / (w.sum() * x.shape[1])


def subject_weights(masks_uint8, idx):
    """1 on the background, `vae_subject_weight` on the subjects (masks [N, 2, H, W] uint8)."""
    m = torch.from_numpy(masks_uint8[idx].max(1)).float()[:, None] / 255.0
    return 1.0 + (HP["vae_subject_weight"] - 1.0) * m


def checkpoint(ck, model, opt, step):
    """Write a stage's checkpoint atomically (an interrupted write never replaces a good one)."""
    tmp = ck + ".tmp"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, tmp)
    os.replace(tmp, ck)


# ----------------------------------------------------------------------------- data
def stage_data():
    path = os.path.join(OUT, "scenes.npz")
    if os.path.exists(path):
        return
    rng = random.Random(HP["seed"])
    train_ids, held_out = scenes.split_identities()
    n = HP["n_scenes"]
    images = np.zeros((n, scenes.SIZE, scenes.SIZE, 3), np.uint8)
    masks = np.zeros((n, 2, scenes.SIZE, scenes.SIZE), np.uint8)
    refs = np.zeros((n, 2, scenes.REF_SIZE, scenes.REF_SIZE, 3), np.uint8)
    n_subj = np.zeros(n, np.int64)
    captions = []
    meta = []
    t0 = time.time()
    for i in range(n):
        s = scenes.make_scene(rng, train_ids)
        images[i] = s.image
        n_subj[i] = len(s.subjects)
        for k in range(len(s.subjects)):
            masks[i, k] = s.masks[k]
            refs[i, k] = s.refs[k]
        captions.append(s.caption)
        meta.append({"context": s.context, "subjects": [x.index() for x in s.subjects], "positions": s.positions, "sizes": s.sizes})
        if i % 2000 == 0:
            print(f"data: {i}/{n} scenes, {time.time() - t0:.0f}s", flush=True)
    np.savez(path, images=images, masks=masks, refs=refs, n_subj=n_subj)
    with open(os.path.join(OUT, "captions.json"), "w") as f:
        json.dump({"captions": captions, "meta": meta, "held_out": held_out}, f)
    print(f"data: {n} scenes in {time.time() - t0:.0f}s")


# ----------------------------------------------------------------------------- VAE


def stage_vae(deadline, init_from=None):
    ck = os.path.join(OUT, "vae.pt")
    dev = device()
    vae = make_vae().to(dev)
    opt = torch.optim.AdamW(vae.parameters(), lr=HP["vae_lr"], weight_decay=0.0)
    step = resume(ck, vae, opt, dev)
    if step >= HP["vae_steps"]:
        return
    if step == 0 and init_from:
        warm_start(vae, torch.load(init_from, map_location=dev)["model"], "vae")
    d, _ = load_data(OUT)
    images = d["images"]
    masks = d["masks"]
    g = torch.Generator().manual_seed(step)
    vae.train()
    t0 = time.time()
    while step < HP["vae_steps"] and time.time() < deadline:
        idx = torch.randint(0, len(images), (HP["vae_batch"],), generator=g).numpy()
        x = to_m11(images[idx]).to(dev)
        post = vae.encode(x).latent_dist
        z = post.sample()
        rec = vae.decode(z).sample
        l_rec = rec_loss(rec, x, subject_weights(masks, idx).to(dev))
        l_kl = post.kl().mean() / (x.shape[1] * x.shape[2] * x.shape[3])
        loss = l_rec + HP["vae_kl"] * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 25 == 0:
            plain = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x)
            log_row(os.path.join(OUT, "vae_log.csv"), {"step": step, "rec": f"{l_rec.item():.5f}", "rec_unweighted": f"{plain.item():.5f}", "kl_per_dim": f"{l_kl.item():.4f}", "s": f"{time.time() - t0:.0f}"})
        if step % 250 == 0 or step == HP["vae_steps"]:
            checkpoint(ck, vae, opt, step)
            print(f"vae: step {step} rec {l_rec.item():.4f} ({time.time() - t0:.0f}s)", flush=True)
    checkpoint(ck, vae, opt, step)


def stage_latents():
    path = os.path.join(OUT, "latents.pt")
    if os.path.exists(path):
        return
    s = torch.load(os.path.join(OUT, "vae.pt"), map_location="cpu")
    if s["step"] < HP["vae_steps"]:
        raise SystemExit("the VAE is not trained yet")
    dev = device()
    vae = make_vae().to(dev).eval()
    vae.load_state_dict(s["model"])
    d, _ = load_data(OUT)
    images = d["images"]
    out = []
    with torch.no_grad():
        for i in range(0, len(images), 64):
            out.append(vae.encode(to_m11(images[i:i + 64]).to(dev)).latent_dist.mean.cpu())
    lat = torch.cat(out)
    scale = float(1.0 / lat.std())
    if "scaling_factor" in s:  # restored: keep the factor the UNet was trained with
        print(f"latents: 1 / std of the re-encoded latents {scale:.5f}; keeping {s['scaling_factor']:.5f}")
        scale = s["scaling_factor"]
    torch.save({"latents": lat * scale, "scaling_factor": scale}, path)
    print(f"latents: {tuple(lat.shape)}, scaling factor {scale:.5f}")


def stage_decoder(deadline):
    """Fine-tune the VAE decoder alone on the fixed latents (the encoder, hence every latent the
    UNet learns, stays as it is): sharper images at no cost to the diffusion stage. A little
    noise on the latents (decoder_latent_noise x their std) makes it tolerant of the UNet's
    imperfect latents."""
    ck = os.path.join(OUT, "vae_decoder.pt")
    dev = device()
    vae = make_vae().to(dev)
    vae.load_state_dict(torch.load(os.path.join(OUT, "vae.pt"), map_location=dev)["model"])
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(params, lr=HP["decoder_lr"], weight_decay=0.0)
    step = resume(ck, vae, opt, dev)
    if step >= HP["decoder_steps"]:
        return
    d, _ = load_data(OUT)
    images = d["images"]
    masks = d["masks"]
    lt = torch.load(os.path.join(OUT, "latents.pt"))
    lat = lt["latents"] / lt["scaling_factor"]
    std = float(lat.std())
    g = torch.Generator().manual_seed(50_000 + step)
    vae.train()
    t0 = time.time()
    while step < HP["decoder_steps"] and time.time() < deadline:
        idx = torch.randint(0, len(images), (HP["decoder_batch"],), generator=g)
        x = to_m11(images[idx.numpy()]).to(dev)
        z = lat[idx] + HP["decoder_latent_noise"] * std * torch.randn(lat[idx].shape, generator=g)
        rec = vae.decode(z.to(dev)).sample
        loss = rec_loss(rec, x, subject_weights(masks, idx.numpy()).to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if step % 25 == 0:
            log_row(os.path.join(OUT, "decoder_log.csv"), {"step": step, "rec": f"{loss.item():.5f}", "s": f"{time.time() - t0:.0f}"})
        if step % 250 == 0 or step == HP["decoder_steps"]:
            checkpoint(ck, vae, opt, step)
            print(f"decoder: step {step} rec {loss.item():.4f} ({time.time() - t0:.0f}s)", flush=True)
    checkpoint(ck, vae, opt, step)


# ----------------------------------------------------------------------------- image encoder


class VisionPretrain(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.vision = CLIPVisionModelWithProjection(CLIPVisionConfig(**HP["image_encoder"]))
        self.heads = torch.nn.ModuleDict({a: torch.nn.Linear(D, len(v)) for a, v in ATTRIBUTES.items()})

    def forward(self, px):
        e = self.vision(pixel_values=px).image_embeds
        return {a: h(e) for a, h in self.heads.items()}


def stage_vision(deadline):
    """Pretrain the image encoder: the paper starts from CLIP's, which already tells a red
    striped cat from a blue plain one; ours learns that from the training identities'
    reference photos. Accuracy on fresh references of held-out identities goes to the log."""
    ck = os.path.join(OUT, "vision.pt")
    dev = device()
    torch.manual_seed(HP["seed"] + 7)
    model = VisionPretrain().to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=HP["vision_lr"], weight_decay=0.01)
    step = resume(ck, model, opt, dev)
    if step >= HP["vision_steps"]:
        return
    d, c = load_data(OUT)
    rows = [(i, k) for i in range(len(d["n_subj"])) for k in range(int(d["n_subj"][i]))]
    refs = d["refs"]
    labels = attribute_labels([c["meta"][i]["subjects"][k] for i, k in rows])
    # Held-out identities, fresh references: never trained on.
    rng = random.Random(99)
    held = [rng.choice(c["held_out"]) for _ in range(512)]
    val_px = ref_pixels(np.stack([scenes.render_reference(scenes.IDENTITIES[i], rng) for i in held])).to(dev)
    val_y = attribute_labels(held)
    g = torch.Generator().manual_seed(70_000 + step)
    t0 = time.time()
    B = HP["vision_batch"]
    while step < HP["vision_steps"] and time.time() < deadline:
        model.train()
        sel = torch.randint(0, len(rows), (B,), generator=g)
        px = ref_pixels(np.stack([refs[rows[j][0], rows[j][1]] for j in sel.tolist()])).to(dev)
        out = model(px)
        loss = sum(F.cross_entropy(out[a], labels[a][sel].to(dev)) for a in ATTRIBUTES)
        lr = HP["vision_lr"] * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / HP["vision_steps"]))
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 100 == 0 or step == HP["vision_steps"]:
            model.eval()
            with torch.no_grad():
                vo = model(val_px)
            acc = {a: float((vo[a].argmax(1).cpu() == val_y[a]).float().mean()) for a in ATTRIBUTES}
            log_row(os.path.join(OUT, "vision_log.csv"), {"step": step, "loss": f"{loss.item():.4f}",
                    **{f"heldout_{a}": f"{v:.3f}" for a, v in acc.items()}, "s": f"{time.time() - t0:.0f}"})
            print(f"vision: step {step} loss {loss.item():.3f} held-out acc "
                  + " ".join(f"{a} {v:.2f}" for a, v in acc.items()) + f" ({time.time() - t0:.0f}s)", flush=True)
            checkpoint(ck, model, opt, step)
    checkpoint(ck, model, opt, step)


# ----------------------------------------------------------------------------- FastComposer


class CaptureAttn2:
    """An attention processor that computes attention explicitly and keeps the
    cross-attention probabilities for the localisation loss."""

    def __init__(self, store):
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(ctx))
        v = attn.head_to_batch_dim(attn.to_v(ctx))
        probs = attn.get_attention_scores(q, k, None)
        self.store.append((attn.heads, probs))
        out = attn.batch_to_head_dim(torch.bmm(probs, v))
        return attn.to_out[1](attn.to_out[0](out))


def localization_processors(unet, store):
    """attn2 of the middle blocks (down 1, mid, up 1: the 8x8 and 4x4 levels) capture maps."""
    procs = {}
    for name in unet.attn_processors:
        middle = name.startswith(("down_blocks.1.", "mid_block.", "up_blocks.1."))
        if middle and ".attn2." in name:
            procs[name] = CaptureAttn2(store)
        else:
            procs[name] = unet.attn_processors[name]
    unet.set_attn_processor(procs)


def ddpm_alphas():
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
    return torch.cumprod(1 - betas, 0)


def encode_captions(tok, captions):
    ids, pos = [], []
    for c in captions:
        r = marker_reference(tok, c)
        ids.append(r["input_ids"])
        pos.append(r["subject_positions"])
    return torch.tensor(ids), pos


def localization_loss(store, positions, masks_full, use_subjects):
    """mean_bg(A) - mean_fg(A) of each subject's token, averaged over subjects, heads, layers."""
    losses = []
    for heads, probs in store:
        bh, L, T = probs.shape
        b = bh // heads
        s = int(math.isqrt(L))
        p = probs.view(b, heads, s, s, T)
        for i in range(b):
            if not use_subjects[i]:
                continue
            for k, tok in enumerate(positions[i]):
                m = F.interpolate(masks_full[i, k][None, None], size=(s, s), mode="area")[0, 0]
                a = p[i, :, :, :, tok]
                fg = (a * m).sum((1, 2)) / (m.sum() + 1e-5)
                bg = (a * (1 - m)).sum((1, 2)) / ((1 - m).sum() + 1e-5)
                losses.append((bg - fg).mean())
    return torch.stack(losses).mean() if losses else torch.zeros(())


def training_inputs():
    """The training scenes, their latents and tokenized captions (stages fc and lcd):
    (scenes, latents, input ids, subject positions, the empty prompt's ids)."""
    d, c = load_data(OUT)
    lat = torch.load(os.path.join(OUT, "latents.pt"))["latents"]
    tok = hf_tokenizer()
    tok.add_tokens([MARKER], special_tokens=True)
    ids, positions = encode_captions(tok, c["captions"])
    empty_ids, _ = encode_captions(tok, [""])
    return d, lat, ids, positions, empty_ids


def fuse_subjects(models, text, idx, use_subjects, positions, refs, n_subj, dev):
    """`text` [B, T, D] with the subject embeddings of every subject of the batch's scenes
    `idx` (where `use_subjects`) fused at their noun tokens."""
    subj = [(i, k) for i in range(len(idx)) if use_subjects[i] for k in range(int(n_subj[idx[i]]))]
    if not subj:
        return text
    px = ref_pixels(np.stack([refs[int(idx[i]), k] for i, k in subj])).to(dev)
    img = models.vision(pixel_values=px).image_embeds
    rows_i = torch.tensor([i for i, _ in subj], device=dev)
    rows_p = torch.tensor([positions[int(idx[i])][k] for i, k in subj], device=dev)
    return text.index_put((rows_i, rows_p), models.fuser(text[rows_i, rows_p], img))


def stage_fc(deadline, max_steps, init_from=None, cooldown=0, cooldown_s=0.0):
    dev = device()
    torch.manual_seed(HP["seed"])
    models = Models().to(dev)
    ema = copy.deepcopy(models).eval().requires_grad_(False)
    params = list(models.parameters())
    opt = torch.optim.AdamW(params, lr=HP["fc_lr"], weight_decay=HP["fc_weight_decay"])
    ck = os.path.join(OUT, "fc.pt")
    step, vision_from, warm_from = 0, None, 0  # warm_from: the optimiser's first step (warm-up)
    if os.path.exists(ck):
        s = torch.load(ck, map_location=dev)
        models.load_state_dict(s["model"]), ema.load_state_dict(s["ema"]), opt.load_state_dict(s["opt"])
        step, vision_from, warm_from = s["step"], s.get("vision_from"), s.get("opt_from", 0)
    elif init_from:
        # Going on from an earlier model (another autoencoder: other latents, so conv_in and
        # conv_out of the UNet start afresh when their width changed); fresh optimiser, warm-up.
        s = torch.load(init_from, map_location=dev)
        warm_start(models, s["ema"], "fc")
        ema.load_state_dict(models.state_dict())
        vision_from = 0 if s.get("vision_from") is not None else None
    if step >= max_steps:
        return
    # The pretrained image encoder (stage `vision`), put in once: at the start, or into a run
    # begun without it (the first default model's 4,400 steps were), resetting its optimiser state.
    vck = os.path.join(OUT, "vision.pt")
    if vision_from is None and os.path.exists(vck):
        vs = torch.load(vck, map_location=dev)
        enc = {k[len("vision."):]: v for k, v in vs["model"].items() if k.startswith("vision.")}
        models.vision.load_state_dict(enc), ema.vision.load_state_dict(enc)
        for p in models.vision.parameters():
            opt.state.pop(p, None)
        vision_from = step
        print(f"fc: pretrained image encoder (vision step {vs['step']}) put in at fc step {step}", flush=True)
    if vision_from is not None:
        # As the paper: only the last layers of the image tower are trained (the frozen
        # parameters get no gradient; AdamW skips them).
        n = HP["image_encoder"]["num_hidden_layers"]
        frozen = [models.vision.vision_model.embeddings, models.vision.vision_model.pre_layrnorm,
                  *models.vision.vision_model.encoder.layers[: n - HP["vision_trainable_layers"]]]
        for mod in frozen:
            mod.requires_grad_(False)
    store = []
    localization_processors(models.unet, store)
    d, lat, ids, positions, empty_ids = training_inputs()
    masks = torch.from_numpy(d["masks"]).float() / 255.0  # [N, 2, 128, 128]
    refs = d["refs"]
    n_subj = d["n_subj"]
    ac = ddpm_alphas().to(dev)
    g = torch.Generator().manual_seed(1000 + step)
    models.train()
    t0 = time.time()
    B = HP["fc_batch"]
    while step < max_steps and time.time() < deadline:
        idx = torch.randint(0, len(lat), (B,), generator=g)
        r = torch.rand((B, 3), generator=g)
        caption_drop = r[:, 0] < HP["caption_dropout"]
        use_subjects = (~caption_drop) & (r[:, 1] >= HP["subject_dropout"])
        masked = r[:, 2] < HP["masked_loss_p"]
        x0 = lat[idx].to(dev)
        noise = torch.randn(x0.shape, generator=g).to(dev)
        t = torch.randint(0, 1000, (B,), generator=g).to(dev)
        a = ac[t][:, None, None, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        batch_ids = torch.where(caption_drop[:, None], empty_ids.expand(B, -1), ids[idx]).to(dev)
        text = models.text(input_ids=batch_ids).last_hidden_state
        pos_b = [positions[int(idx[i])] if use_subjects[i] else [] for i in range(B)]
        cond = fuse_subjects(models, text, idx, use_subjects, positions, refs, n_subj, dev)
        store.clear()
        pred = models.unet(xt, t, encoder_hidden_states=cond).sample
        m = F.interpolate(masks[idx].amax(1, keepdim=True), size=x0.shape[-2:], mode="area").to(dev)
        w = torch.where(masked.to(dev)[:, None, None, None], m, torch.ones_like(m))
        l_diff = ((pred - noise) ** 2 * w).sum() / (w.sum() * x0.shape[1] + 1e-8)
        l_loc = localization_loss(store, pos_b, masks[idx].to(dev), use_subjects.tolist())
        loss = l_diff + HP["localization_weight"] * l_loc
        lr = HP["fc_lr"] * min(1.0, (step - warm_from + 1) / HP["fc_warmup"])
        if cooldown:  # linear to zero over the last `cooldown` steps before max_steps
            lr *= min(1.0, (max_steps - step) / cooldown)
        if cooldown_s:  # linear to zero over the last `cooldown_s` seconds before the deadline
            lr *= min(1.0, max(0.0, deadline - time.time()) / cooldown_s)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, HP["grad_clip"])
        opt.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), models.parameters()):
                pe.lerp_(pm, 1 - HP["ema"])
        step += 1
        if step % 20 == 0:
            log_row(os.path.join(OUT, "fc_log.csv"), {
                "step": step, "loss": f"{loss.item():.5f}", "denoise": f"{l_diff.item():.5f}",
                "localization": f"{float(l_loc.detach()):.4f}", "lr": f"{lr:.2e}", "s": f"{time.time() - t0:.0f}"})
        if step % 200 == 0:
            print(f"fc: step {step} denoise {l_diff.item():.4f} loc {float(l_loc.detach()):.3f} ({time.time() - t0:.0f}s)", flush=True)
            save_fc(ck, models, ema, opt, step, vision_from, warm_from)
    save_fc(ck, models, ema, opt, step, vision_from, warm_from)


def save_fc(ck, models, ema, opt, step, vision_from, opt_from=0):
    # Processors hold no weights; state dicts are unaffected by them.
    tmp = ck + ".tmp"
    torch.save({"model": models.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step,
                "vision_from": vision_from, "opt_from": opt_from}, tmp)
    os.replace(tmp, ck)


# ----------------------------------------------------------------------------- few-step (LCM)
def lcm_boundary(t, scaling=10.0, sigma_data=0.5):
    """(c_skip, c_out) of the consistency boundary condition, as diffusers' LCMScheduler."""
    s = t.float() * scaling
    return sigma_data ** 2 / (s ** 2 + sigma_data ** 2), s / (s ** 2 + sigma_data ** 2).sqrt()


def stage_lcd(deadline, max_steps):
    """Latent consistency distillation (Luo et al. 2023, Algorithm 1) of the trained UNet into a
    few-step one. Teacher: the fc stage's EMA models, frozen, with classifier-free guidance
    `lcd_guidance` and one DDIM step of `1000 / lcd_ddim_steps` timesteps as the ODE solver.
    Student: a copy of the UNet, trained so that its consistency function f(z_t, t, c) =
    c_skip z_t + c_out x0(z_t) agrees with the EMA target's at the solver's next point
    (Huber loss). The conditioning is the fc stage's: text-only for a share of the samples
    (`lcd_text_only`, the early steps of delayed subject conditioning), subject-augmented for the
    rest. The text encoder, image encoder and fuser stay as they are."""
    dev = device()
    torch.manual_seed(HP["seed"] + 11)
    s = torch.load(os.path.join(OUT, "fc.pt"), map_location=dev)
    teacher = Models().to(dev)
    teacher.load_state_dict(s["ema"])
    teacher.eval().requires_grad_(False)
    student = copy.deepcopy(teacher.unet).train().requires_grad_(True)
    target = copy.deepcopy(teacher.unet).eval()
    opt = torch.optim.AdamW(student.parameters(), lr=HP["lcd_lr"], weight_decay=0.0)
    ck = os.path.join(OUT, "lcd.pt")
    step = 0
    if os.path.exists(ck):
        c = torch.load(ck, map_location=dev)
        student.load_state_dict(c["model"]), target.load_state_dict(c["target"]), opt.load_state_dict(c["opt"])
        step = c["step"]
    if step >= max_steps:
        return
    d, lat, ids, positions, empty_ids = training_inputs()
    refs, n_subj = d["refs"], d["n_subj"]
    ac = ddpm_alphas().to(dev)
    k = 1000 // HP["lcd_ddim_steps"]
    w = HP["lcd_guidance"]
    B = HP["lcd_batch"]
    with torch.no_grad():
        uncond = teacher.text(input_ids=empty_ids.to(dev)).last_hidden_state.expand(B, -1, -1)
    g = torch.Generator().manual_seed(90_000 + step)
    t0 = time.time()
    while step < max_steps and time.time() < deadline:
        idx = torch.randint(0, len(lat), (B,), generator=g)
        use_subjects = torch.rand(B, generator=g) >= HP["lcd_text_only"]
        x0 = lat[idx].to(dev)
        noise = torch.randn(x0.shape, generator=g).to(dev)
        n = torch.randint(0, HP["lcd_ddim_steps"], (B,), generator=g).to(dev)
        t = (n + 1) * k - 1  # the solver's grid (LCMScheduler's original schedule)
        t_prev = (t - k).clamp(min=0)
        a, a_prev = ac[t][:, None, None, None], ac[t_prev][:, None, None, None]
        zt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with torch.no_grad():
            text = teacher.text(input_ids=ids[idx].to(dev)).last_hidden_state
            cond = fuse_subjects(teacher, text, idx, use_subjects, positions, refs, n_subj, dev)
            # Teacher: guided epsilon, one DDIM step t -> t_prev.
            eps2 = teacher.unet(torch.cat([zt, zt]), torch.cat([t, t]), encoder_hidden_states=torch.cat([uncond, cond])).sample
            eps_u, eps_c = eps2.chunk(2)
            eps = eps_u + w * (eps_c - eps_u)
            x0_teacher = (zt - (1 - a).sqrt() * eps) / a.sqrt()
            z_prev = a_prev.sqrt() * x0_teacher + (1 - a_prev).sqrt() * eps
            # Target: the EMA student's consistency function at the solver's point.
            cs, co = lcm_boundary(t_prev)
            e_tg = target(z_prev, t_prev, encoder_hidden_states=cond).sample
            f_tg = cs[:, None, None, None] * z_prev + co[:, None, None, None] * (z_prev - (1 - a_prev).sqrt() * e_tg) / a_prev.sqrt()
        cs, co = lcm_boundary(t)
        e_st = student(zt, t, encoder_hidden_states=cond).sample
        f_st = cs[:, None, None, None] * zt + co[:, None, None, None] * (zt - (1 - a).sqrt() * e_st) / a.sqrt()
        hc = HP["lcd_huber_c"]
        loss = ((f_st.float() - f_tg.float()) ** 2 + hc ** 2).sqrt().mean() - hc
        lr = HP["lcd_lr"] * min(1.0, (step + 1) / HP["lcd_warmup"])
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), HP["grad_clip"])
        opt.step()
        with torch.no_grad():
            for pt, ps in zip(target.parameters(), student.parameters()):
                pt.lerp_(ps, 1 - HP["lcd_target_ema"])
        step += 1
        if step % 20 == 0:
            log_row(os.path.join(OUT, "lcd_log.csv"), {"step": step, "loss": f"{loss.item():.5f}", "lr": f"{lr:.2e}",
                                                       "s": f"{time.time() - t0:.0f}"})
        if step % 100 == 0:
            print(f"lcd: step {step} loss {loss.item():.4f} ({time.time() - t0:.0f}s)", flush=True)
            save_lcd(ck, student, target, opt, step)
    save_lcd(ck, student, target, opt, step)


def save_lcd(ck, student, target, opt, step):
    tmp = ck + ".tmp"
    torch.save({"model": student.state_dict(), "target": target.state_dict(), "opt": opt.state_dict(), "step": step}, tmp)
    os.replace(tmp, ck)


# ----------------------------------------------------------------------------- restore
def load_into(module, weights, what, only=""):
    """Load float arrays into a module; every parameter (whose name starts with `only`) must be
    there (buffers may not be)."""
    sd = {k: torch.from_numpy(v) for k, v in weights.items()}
    own = module.state_dict()
    if not any(k in own for k in sd):  # transformers 5 saves CLIPTextModel without `text_model.`
        sd = {"text_model." + k: v for k, v in sd.items()}
    missing, unexpected = module.load_state_dict(sd, strict=False)
    params = {k for k, _ in module.named_parameters() if k.startswith(only)}
    lost = [k for k in missing if k in params]
    if lost or unexpected:
        raise SystemExit(f"restore: {what}: missing {lost[:5]}, unexpected {unexpected[:5]}")


def stage_restore(bundle, encoder_bundle, step, decoder_step):
    """Checkpoints from bundles. `bundle`: the models and the (fine-tuned) VAE decoder;
    `encoder_bundle`: a bundle that holds the VAE encoder the latents were made with (the
    same file when it was written with --keep-vae-encoder)."""
    meta, t = read_bundle(bundle)
    cfg = json.loads(meta["fastcomposer.config"])
    HP["vae"]["latent_channels"] = cfg["vae"]["latent_channels"]  # the first default model's were 4
    _, te = read_bundle(encoder_bundle) if encoder_bundle else (None, t)
    if not any(k.startswith("vae.encoder.") for k in te):
        raise SystemExit("restore: no VAE encoder in the bundle (write one with --keep-vae-encoder, or pass --encoder-bundle)")
    models = Models()
    load_into(models.text, component(t, "text_encoder"), "text encoder")
    load_into(models.vision, component(t, "image_encoder"), "image encoder")
    load_into(models.fuser, component(t, "fuser"), "fuser")
    load_into(models.unet, component(t, "unet"), "unet")
    opt = torch.optim.AdamW(models.parameters(), lr=HP["fc_lr"])
    ema = copy.deepcopy(models)
    save_fc(os.path.join(OUT, "fc.pt"), models, ema, opt, step, vision_from=step, opt_from=step)
    # The original VAE (encoder and decoder as the latents were made), then the fine-tuned decoder.
    vae = make_vae()
    load_into(vae, component(te, "vae"), "vae (encoder bundle)")
    sf = float(cfg["vae"]["scaling_factor"])
    torch.save({"model": vae.state_dict(), "opt": torch.optim.AdamW(vae.parameters()).state_dict(),
                "step": HP["vae_steps"], "scaling_factor": sf}, os.path.join(OUT, "vae.pt"))
    dec = {k: v for k, v in component(t, "vae").items() if k.startswith(("decoder.", "post_quant_conv."))}
    load_into(vae, dec, "vae decoder", only=("decoder.", "post_quant_conv."))
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    torch.save({"model": vae.state_dict(), "opt": torch.optim.AdamW(params).state_dict(), "step": decoder_step},
               os.path.join(OUT, "vae_decoder.pt"))
    lat = os.path.join(OUT, "latents.pt")  # made again (stage `latents`) from the restored encoder
    if os.path.exists(lat):
        os.remove(lat)
    print(f"restore: fc step {step} from {bundle}; VAE encoder from {encoder_bundle or bundle}; scaling factor {sf}")


# ----------------------------------------------------------------------------- export
def stage_export(lcd=False):
    """`lcd`: the few-step model (the lcd stage's target UNet in place of the fc stage's, an
    LCMScheduler config) into model_lcm/ instead of model/."""
    from safetensors.torch import save_file

    s = torch.load(os.path.join(OUT, "fc.pt"), map_location="cpu")
    models = Models()
    models.load_state_dict(s["ema"])
    if lcd:
        lc = torch.load(os.path.join(OUT, "lcd.pt"), map_location="cpu")
        models.unet.load_state_dict(lc["target"])
    vae = make_vae()
    dec = os.path.join(OUT, "vae_decoder.pt")  # the fine-tuned decoder, when that stage ran
    vae.load_state_dict(torch.load(dec if os.path.exists(dec) else os.path.join(OUT, "vae.pt"), map_location="cpu")["model"])
    lat = os.path.join(OUT, "latents.pt")
    sf = (torch.load(lat) if os.path.exists(lat) else torch.load(os.path.join(OUT, "vae.pt"), map_location="cpu"))["scaling_factor"]
    vae.register_to_config(scaling_factor=sf)
    root = os.path.join(OUT, "model_lcm" if lcd else "model")
    models.text.save_pretrained(os.path.join(root, "text_encoder"))
    models.vision.save_pretrained(os.path.join(root, "image_encoder"))
    models.unet.save_pretrained(os.path.join(root, "unet"))
    vae.save_pretrained(os.path.join(root, "vae"))
    os.makedirs(os.path.join(root, "fuser"), exist_ok=True)
    save_file({k: v.contiguous() for k, v in models.fuser.state_dict().items()}, os.path.join(root, "fuser", "model.safetensors"))
    with open(os.path.join(root, "fuser", "config.json"), "w") as f:
        json.dump({"embed_dim": D}, f)
    os.makedirs(os.path.join(root, "scheduler"), exist_ok=True)
    sched = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
             "beta_end": 0.012, "beta_schedule": "scaled_linear", "set_alpha_to_one": False,
             "steps_offset": 1, "clip_sample": False, "prediction_type": "epsilon"}
    if lcd:
        sched.update({"_class_name": "LCMScheduler", "original_inference_steps": HP["lcd_ddim_steps"],
                      "timestep_scaling": 10.0})  # DDIM's fields kept: that scheduler stays usable
    with open(os.path.join(root, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(sched, f, indent=1)
    print(f"export: {root} (fc step {s['step']}" + (f", lcd step {lc['step']})" if lcd else ")"))


def main():
    global OUT
    ap = argparse.ArgumentParser()
    ap.add_argument("stage", choices=["data", "vae", "latents", "decoder", "vision", "fc", "export", "all", "restore", "lcd"])
    ap.add_argument("--minutes", type=float, default=120, help="stop (and checkpoint) after this long")
    ap.add_argument("--fc-steps", type=int, default=100000, help="stop fc training at this step")
    ap.add_argument("--cooldown", type=int, default=0, help="fc: the learning rate falls linearly to zero "
                    "over this many steps before --fc-steps (0: flat after the warm-up)")
    ap.add_argument("--cooldown-minutes", type=float, default=0, help="fc: the learning rate falls linearly to "
                    "zero over this many minutes before the time runs out (for a run given a time, not steps)")
    ap.add_argument("--decoder-minutes", type=float, default=8, help="all: the decoder stage's share of the time")
    ap.add_argument("--dir", default=OUT, help="where the checkpoints, logs and exported model go")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--lcd-steps", type=int, default=100000, help="stop lcd training at this step")
    ap.add_argument("--lcd", action="store_true", help="export: the few-step (lcd) model into model_lcm/")
    ap.add_argument("--bundle", help="restore: the bundle to go on from")
    ap.add_argument("--encoder-bundle", help="restore: a bundle holding the VAE encoder, if --bundle does not")
    ap.add_argument("--step", type=int, help="restore: the fc step the bundle was exported at")
    ap.add_argument("--decoder-step", type=int, default=0, help="restore: the decoder stage's step")
    ap.add_argument("--init-from", help="vae / fc: start (not resume) from an earlier checkpoint of that stage "
                    "(vae.pt / fc.pt); tensors whose shape changed start afresh")
    a = ap.parse_args()
    if a.cooldown < 0:
        raise SystemExit(f"--cooldown must be 0 or more steps, not {a.cooldown}")
    if a.cooldown_minutes < 0 or a.decoder_minutes < 0:
        raise SystemExit("--cooldown-minutes and --decoder-minutes must be 0 or more")
    if a.cooldown and a.cooldown_minutes:
        raise SystemExit("give the cool-down in steps (--cooldown) or in minutes (--cooldown-minutes), not both")
    OUT = os.path.abspath(a.dir)
    if a.init_from and a.stage not in ("vae", "fc"):
        raise SystemExit("--init-from goes with the stage vae or fc")
    if a.threads:
        torch.set_num_threads(a.threads)
    os.makedirs(OUT, exist_ok=True)
    vck = os.path.join(OUT, "vae.pt")
    if os.path.exists(vck):  # the stages go with the checkpoints present, whatever their latent width
        HP["vae"]["latent_channels"] = latent_width(torch.load(vck, map_location="cpu")["model"])
    with open(os.path.join(OUT, "hparams.json"), "w") as f:
        json.dump(HP, f, indent=1)
    deadline = time.time() + a.minutes * 60
    stages = ["data", "vae", "latents", "decoder", "vision", "fc", "export"] if a.stage == "all" else [a.stage]
    for st in stages:
        if st == "data":
            stage_data()
        elif st == "vae":
            stage_vae(deadline, a.init_from)
        elif st == "latents":
            stage_latents()
        elif st == "decoder":
            if a.stage != "all":
                stage_decoder(deadline)
                continue
            # In `all` the decoder stage gets a share of the time (it could use all of it), and
            # only once: a resumed `all` whose fc stage has begun goes straight on with fc.
            if not os.path.exists(os.path.join(OUT, "fc.pt")):
                stage_decoder(min(deadline, time.time() + a.decoder_minutes * 60))
        elif st == "vision":
            stage_vision(deadline)
        elif st == "fc":
            stage_fc(deadline, a.fc_steps, a.init_from, a.cooldown, a.cooldown_minutes * 60)
        elif st == "lcd":
            stage_lcd(deadline, a.lcd_steps)
        elif st == "export":
            stage_export(a.lcd)
        elif st == "restore":
            if not a.bundle or a.step is None:
                raise SystemExit("restore needs --bundle and --step")
            stage_restore(a.bundle, a.encoder_bundle, a.step, a.decoder_step)


if __name__ == "__main__":
    main()
