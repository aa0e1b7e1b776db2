"""Golden fixtures for every model component and the schedulers, from the reference libraries
(diffusers, transformers) on tiny random-weight configs.

Layout: crate/tests/fixtures/<component>/
  config.json           the reference library's own saved config (save_pretrained)
  weights.safetensors   the reference key names (UNet/VAE weights are f16-exact values stored
                        as F16 to keep the repo small; the reference ran on the same values in f32)
  <case>.in.safetensors / <case>.out.safetensors   inputs named as `fastcomposer forward`
                        expects them, and the output `out`.
Schedulers: crate/tests/fixtures/scheduler/<kind>_<steps>.safetensors.

Run:  tools/.venv/bin/python tools/reference/make_fixtures.py
"""

import json
import os
import shutil
import sys
import tempfile

import torch
from diffusers import AutoencoderKL, AutoencoderTiny, DDIMScheduler, EulerDiscreteScheduler, LCMScheduler, PNDMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

from fctools.reference.common import FIXTURES, randomize, save_json, save_tensors
from fctools.reference.fastcomposer_ref import Fuser

torch.set_grad_enabled(False)


def saved_config(model, name="config.json"):
    """The config exactly as the library's save_pretrained writes it."""
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        with open(os.path.join(d, name)) as f:
            return json.load(f)


def reset(dirname):
    path = os.path.join(FIXTURES, dirname)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def write_component(dirname, model, config, cases, half=False):
    path = reset(dirname)
    save_json(os.path.join(path, "config.json"), config)
    save_tensors(os.path.join(path, "weights.safetensors"), model.state_dict(), half=half)
    for case, (inputs, out) in cases.items():
        save_tensors(os.path.join(path, f"{case}.in.safetensors"), inputs)
        save_tensors(os.path.join(path, f"{case}.out.safetensors"), {"out": out})
    print(f"{dirname}: {sum(p.numel() for p in model.parameters())} params, cases {list(cases)}")


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- CLIP text
def text_encoder():
    cfg = CLIPTextConfig(
        vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
    )
    m = CLIPTextModel(cfg).eval()
    randomize(m, 1)
    ids = torch.randint(0, 1000, (2, 77), generator=gen(2))
    ids[:, 0] = 1  # any id < vocab works; no special meaning in the tiny vocab
    out = m(input_ids=ids).last_hidden_state
    write_component("text_encoder", m, saved_config(m), {"case0": ({"input_ids": ids}, out)})


# ---------------------------------------------------------------- CLIP vision
def vision_encoder():
    cfg = CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, projection_dim=24, num_hidden_layers=3,
        num_attention_heads=4, image_size=30, patch_size=6, hidden_act="quick_gelu",
    )
    m = CLIPVisionModelWithProjection(cfg).eval()
    randomize(m, 3)
    px = torch.randn((2, 3, 30, 30), generator=gen(4))
    out = m(pixel_values=px).image_embeds
    write_component("vision_encoder", m, saved_config(m), {"case0": ({"pixel_values": px}, out)})


# ---------------------------------------------------------------- fuser
def fuser():
    d = 24
    m = Fuser(d).eval()
    randomize(m, 5)
    text = torch.randn((5, d), generator=gen(6))
    image = torch.randn((5, d), generator=gen(7))
    out = m(text, image)
    write_component("fuser", m, {"embed_dim": d}, {"case0": ({"text": text, "image": image}, out)})


# ---------------------------------------------------------------- UNet
def unet_cases(m, cross_dim, seed, shapes):
    cases = {}
    for k, (b, h, w) in enumerate(shapes):
        g = gen(seed + k)
        sample = torch.randn((b, m.config.in_channels, h, w), generator=g)
        t = torch.tensor([981.0, 1.0, 500.0, 37.0][:b])
        ehs = torch.randn((b, 7 + k, cross_dim), generator=g)
        out = m(sample, t, encoder_hidden_states=ehs).sample
        cases[f"case{k}"] = ({"sample": sample, "timestep": t, "encoder_hidden_states": ehs}, out)
    return cases


def unets():
    # The shape diffusers' own UNet2DConditionModel tests use.
    tiny = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
    ).eval()
    randomize(tiny, 10, half_exact=True)
    cases = unet_cases(tiny, 32, 11, [(2, 8, 12), (1, 9, 7)])
    write_component("unet_tiny", tiny, saved_config(tiny), cases, half=True)

    # SD1.5's block order (cross-attention down x2, plain down; plain up, cross-attention up x2),
    # three levels, SD1.5 settings otherwise (heads from attention_head_dim, conv projections).
    sd = UNet2DConditionModel(
        block_out_channels=(32, 64, 64), layers_per_block=2, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=16,
    ).eval()
    randomize(sd, 12, half_exact=True)
    cases = unet_cases(sd, 32, 13, [(2, 16, 16), (1, 12, 20), (1, 10, 6)])
    write_component("unet_sd_order", sd, saved_config(sd), cases, half=True)


# ---------------------------------------------------------------- VAE
def vae():
    m = AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8,
        sample_size=32,
    ).eval()
    randomize(m, 20, half_exact=True)
    g = gen(21)
    cases = {}
    lat = torch.randn((2, 4, 5, 6), generator=g)
    cases["decode0"] = ({"latents": lat}, m.decode(lat).sample)
    img = torch.rand((1, 3, 24, 16), generator=g) * 2 - 1
    h = m.encoder(img)
    moments = m.quant_conv(h)
    cases["encode0"] = ({"image": img}, moments)
    write_component("vae", m, saved_config(m), cases, half=True)


def vae_tiny():
    # TAESD's layout at a small width (diffusers' DecoderTiny keeps one width throughout: its
    # blocks and level convolutions map a level's channels to themselves).
    m = AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(12, 12, 12, 12),
        num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(2, 2, 1, 1), latent_channels=4,
    ).eval()
    randomize(m, 22, half_exact=True)
    lat = torch.randn((2, 4, 5, 6), generator=gen(23)) * 2
    cases = {"decode0": ({"latents": lat}, m.decode(lat).sample)}
    write_component("vae_tiny", m, saved_config(m), cases, half=True)


# ---------------------------------------------------------------- LoRA
def lora():
    """LoRAs on the tiny UNet and text encoder fixtures (their weights, read back): linear and
    convolution updates (3x3 down, 1x1 up in the resnets), rank 4, alpha 8, applied by peft at
    scale 0.7 on each fixture's case0; the same updates written in the three file formats."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    def fixture(name):
        with open(os.path.join(FIXTURES, name, "config.json")) as f:
            cfg = json.load(f)
        return cfg, {k: v.float() for k, v in load_file(os.path.join(FIXTURES, name, "weights.safetensors")).items()}

    rank, alpha, scale = 4, 8, 0.7
    cfg, w = fixture("unet_tiny")
    unet = UNet2DConditionModel.from_config(cfg).eval()
    unet.load_state_dict(w)
    cfg, w = fixture("text_encoder")
    te = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in cfg.items() if not k.startswith("_")})).eval()
    te.load_state_dict(w, strict=False)  # position_ids: a buffer
    unet = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=[
        "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
        "conv1", "conv2", "time_emb_proj"]), unet)
    te = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=[
        "q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]), te)
    g = gen(30)
    with torch.no_grad():
        for m in (unet, te):
            for n, p in m.named_parameters():
                if "lora_" in n:
                    fan_in = p[0].numel()
                    p.copy_((torch.randn(p.shape, generator=g) / fan_in ** 0.5).half().float())
            for layer in m.modules():
                if isinstance(layer, LoraLayer):
                    layer.scale_layer(scale)
    path = reset("lora")
    unet_in = load_file(os.path.join(FIXTURES, "unet_tiny", "case0.in.safetensors"))
    te_in = load_file(os.path.join(FIXTURES, "text_encoder", "case0.in.safetensors"))
    with torch.no_grad():
        unet_out = unet(unet_in["sample"], unet_in["timestep"], unet_in["encoder_hidden_states"]).sample
        te_out = te(input_ids=te_in["input_ids"]).last_hidden_state
    save_tensors(os.path.join(path, "unet.out.safetensors"), {"out": unet_out})
    save_tensors(os.path.join(path, "text_encoder.out.safetensors"), {"out": te_out})
    sd = {"unet": get_peft_model_state_dict(unet), "text_encoder": get_peft_model_state_dict(te)}
    kohya, peft, old = {}, {}, {}
    for part, short in (("unet", "unet"), ("text_encoder", "te")):
        for k, v in sd[part].items():
            module, role = k.rsplit(".lora_", 1)
            # SD1.5's LoRA files name the text encoder's modules from `text_model.` (transformers 4),
            # which the fixture's weights (transformers 5) leave out: both must match.
            if part == "text_encoder" and not module.startswith("text_model."):
                module = f"text_model.{module}"
            up = role.startswith("B")
            # Files without an alpha mean alpha = rank: their up matrices carry alpha / rank.
            baked = v * (alpha / rank) if up else v
            kohya[f"lora_{short}_{module.replace('.', '_')}.lora_{'up' if up else 'down'}.weight"] = v
            kohya[f"lora_{short}_{module.replace('.', '_')}.alpha"] = torch.tensor(float(alpha))
            peft[f"{part}.{module}.lora_{'B' if up else 'A'}.weight"] = baked
            old[f"{part}.{module}.lora.{'up' if up else 'down'}.weight"] = baked
    # kohya with the original SD checkpoint's UNet names (input_blocks / middle_block /
    # output_blocks); diffusers' own converter must read them back to the diffusers names.
    layers = unet.config.layers_per_block
    kohya_sd = {}
    for k, v in kohya.items():
        module, role = k.split(".", 1)
        if module.startswith("lora_unet_"):
            dotted = sd_unet_name(_peft_module(sd["unet"], module[len("lora_unet_"):]), layers)
            module = "lora_unet_" + dotted.replace(".", "_")
        kohya_sd[f"{module}.{role}"] = v
    check_sd_names(kohya, kohya_sd, unet.config)
    for name, tensors in (("kohya", kohya), ("kohya_sd", kohya_sd), ("peft", peft), ("diffusers_old", old)):
        save_tensors(os.path.join(path, f"{name}.safetensors"), tensors)
    print(f"lora: {len(sd['unet']) // 2} unet and {len(sd['text_encoder']) // 2} text encoder modules, rank {rank}, alpha {alpha}, scale {scale}")


def _peft_module(peft_sd, flat):
    """The dotted diffusers module whose kohya name (`.` -> `_`) is `flat`."""
    for k in peft_sd:
        module = k.rsplit(".lora_", 1)[0]
        if module.replace(".", "_") == flat:
            return module
    raise KeyError(flat)


def sd_unet_name(module, layers):
    """The original SD (LDM) name of a diffusers UNet module with `layers` per block (resnets,
    attentions and the time embedding; what the fixture's LoRA touches)."""
    resnet = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
              "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
    p = module.split(".")
    if p[0] in ("down_blocks", "up_blocks") and p[2] in ("resnets", "attentions"):
        i, j = int(p[1]), int(p[3])
        n = i * (layers + 1) + j + (1 if p[0] == "down_blocks" else 0)
        inner = f"0.{resnet[p[4]]}" if p[2] == "resnets" else "1." + ".".join(p[4:])
        return f"{'input_blocks' if p[0] == 'down_blocks' else 'output_blocks'}.{n}.{inner}"
    if p[0] == "mid_block":
        slot = {("resnets", "0"): 0, ("attentions", "0"): 1, ("resnets", "1"): 2}[(p[1], p[2])]
        inner = resnet[p[3]] if p[1] == "resnets" else ".".join(p[3:])
        return f"middle_block.{slot}.{inner}"
    raise ValueError(f"no SD name for {module}")


def check_sd_names(kohya, kohya_sd, unet_config):
    """diffusers' converter (the one `load_lora_weights` runs) maps the SD-named file to the same
    modules as the diffusers-named one."""
    from diffusers.loaders.lora_conversion_utils import (
        _convert_non_diffusers_lora_to_diffusers, _maybe_map_sgm_blocks_to_diffusers)

    def convert(d):
        d = _maybe_map_sgm_blocks_to_diffusers(dict(d), unet_config)
        converted, alphas = _convert_non_diffusers_lora_to_diffusers(d)
        return {**converted, **{f"alpha:{k}": torch.tensor(v) for k, v in alphas.items()}}

    a, b = convert(kohya), convert(kohya_sd)
    if a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a):
        raise SystemExit(f"SD-named LoRA: diffusers reads other modules: {sorted(set(a) ^ set(b))[:5]}")


# ---------------------------------------------------------------- schedulers
SD15_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    set_alpha_to_one=False, steps_offset=1, skip_prk_steps=True, clip_sample=False,
)


def schedulers():
    path = reset("scheduler")
    for kind, cls in [("ddim", DDIMScheduler), ("pndm", PNDMScheduler)]:
        cfg = dict(SD15_SCHEDULER)
        cfg.pop("skip_prk_steps" if kind == "ddim" else "clip_sample")
        for steps in (1, 20, 50):
            s = cls(**cfg)
            s.set_timesteps(steps)
            g = gen(100 + steps)
            # A realistic trajectory: the "model" predicts the noise that leads to a fixed clean
            # latent, plus a little error, so samples keep the magnitude they have in real
            # generation (|x| of a few units) instead of growing step after step.
            x0_true = torch.randn((1, 4, 8, 8), generator=g)
            sample = torch.randn((1, 4, 8, 8), generator=g)
            x = sample
            eps, outs = [], []
            for t in s.timesteps:
                a = s.alphas_cumprod[int(t)]
                e = (x - a.sqrt() * x0_true) / (1 - a).sqrt() + 0.1 * torch.randn((1, 4, 8, 8), generator=g)
                x = s.step(e, t, x).prev_sample
                eps.append(e)
                outs.append(x)
            save_tensors(os.path.join(path, f"{kind}_{steps}.safetensors"), {
                "timesteps": s.timesteps.to(torch.int64),
                "alphas_cumprod": s.alphas_cumprod.float(),
                "sample": sample,
                "eps": torch.stack(eps),
                "out": torch.stack(outs),
            })
        save_json(os.path.join(path, f"{kind}_config.json"), dict(s.config))
    print("schedulers: ddim, pndm x 1, 20, 50 steps")
    euler(path)


def euler(path):
    """EulerDiscreteScheduler, "leading" spacing: also the scaled model inputs and the initial sigma."""
    cfg = dict(SD15_SCHEDULER)
    cfg.pop("skip_prk_steps")
    cfg.pop("clip_sample")
    cfg.pop("set_alpha_to_one")
    cfg["timestep_spacing"] = "leading"
    for steps in (1, 20, 50):
        s = EulerDiscreteScheduler(**cfg)
        s.set_timesteps(steps)
        g = gen(200 + steps)
        # The same kind of realistic trajectory, in sigma space: x = x0 + sigma * noise.
        x0_true = torch.randn((1, 4, 8, 8), generator=g)
        sample = torch.randn((1, 4, 8, 8), generator=g) * s.init_noise_sigma
        x = sample
        eps, scaled, outs = [], [], []
        for i, t in enumerate(s.timesteps):
            scaled.append(s.scale_model_input(x, t))
            sigma = s.sigmas[i]
            e = (x - x0_true) / sigma + 0.1 * torch.randn((1, 4, 8, 8), generator=g)
            x = s.step(e, t, x).prev_sample
            eps.append(e)
            outs.append(x)
        save_tensors(os.path.join(path, f"euler_{steps}.safetensors"), {
            "timesteps": s.timesteps.round().to(torch.int64),
            "sigmas": s.sigmas.float(),
            "init_noise_sigma": torch.tensor([float(s.init_noise_sigma)]),
            "alphas_cumprod": s.alphas_cumprod.float(),
            "sample": sample,
            "eps": torch.stack(eps),
            "scaled": torch.stack(scaled),
            "out": torch.stack(outs),
        })
    save_json(os.path.join(path, "euler_config.json"), dict(s.config))
    print("schedulers: euler x 1, 20, 50 steps")
    lcm(path)


def lcm(path):
    """LCMScheduler made from SD1.5's scheduler config (as `LCMScheduler.from_config(pipe.scheduler.config)`
    does for an LCM-LoRA). Its steps re-noise with fresh noise: the noise drawn is saved too."""
    cfg = dict(SD15_SCHEDULER)
    cfg.pop("skip_prk_steps")
    for steps in (1, 2, 4, 8):
        s = LCMScheduler(**cfg)
        s.set_timesteps(steps)
        g = gen(300 + steps)
        x0_true = torch.randn((1, 4, 8, 8), generator=g)
        sample = torch.randn((1, 4, 8, 8), generator=g)
        x = sample
        eps, noises, denoised, outs = [], [], [], []
        for i, t in enumerate(s.timesteps):
            a = s.alphas_cumprod[int(t)]
            e = (x - a.sqrt() * x0_true) / (1 - a).sqrt() + 0.1 * torch.randn((1, 4, 8, 8), generator=g)
            state = g.get_state()
            noises.append(torch.randn((1, 4, 8, 8), generator=g))  # what step() draws next
            g.set_state(state)
            r = s.step(e, t, x, generator=g)
            x = r.prev_sample
            eps.append(e)
            denoised.append(r.denoised)
            outs.append(x)
        save_tensors(os.path.join(path, f"lcm_{steps}.safetensors"), {
            "timesteps": s.timesteps.to(torch.int64),
            "alphas_cumprod": s.alphas_cumprod.float(),
            "sample": sample,
            "eps": torch.stack(eps),
            "noise": torch.stack(noises),
            "denoised": torch.stack(denoised),
            "out": torch.stack(outs),
        })
    save_json(os.path.join(path, "lcm_config.json"), dict(s.config))
    print("schedulers: lcm x 1, 2, 4, 8 steps")


def main():
    # All parts, or the ones named: python make_fixtures.py [text_encoder vision_encoder fuser unets vae vae_tiny lora schedulers]
    parts = {f.__name__: f for f in (text_encoder, vision_encoder, fuser, unets, vae, vae_tiny, lora, schedulers)}
    for name in sys.argv[1:] or parts:
        parts[name]()


if __name__ == "__main__":
    main()
