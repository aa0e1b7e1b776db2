"""How much identity survives the default model's autoencoder: fresh ground-truth scenes of
held-out identities, scored by the attribute judge as rendered and after a VAE round trip
(encode with the training VAE's encoder, decode with the fine-tuned decoder the bundle ships).
No generator can keep more identity than its decoder can draw, so the round trip's score is a
ceiling for the evaluation's identity column. A diagnostic for the training (it needs the
training checkpoints), not part of the evaluation.

    tools/.venv/bin/python tools/eval/autoencoder_ceiling.py [--n 600]
"""

import argparse
import os
import random

import numpy as np
import torch

from fctools.dataset import scenes
from fctools.eval import judges
from fctools.eval.evaluate import ATTRS
from fctools.train import models as T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=600, help="scenes")
    ap.add_argument("--seed", type=int, default=777)
    ap.add_argument("--dir", default=T.DEFAULT_OUT, help="the training checkpoints (vae.pt, and vae_decoder.pt if that stage ran)")
    a = ap.parse_args()
    torch.manual_seed(0)
    enc = torch.load(os.path.join(a.dir, "vae.pt"), map_location="cpu")["model"]
    dp = os.path.join(a.dir, "vae_decoder.pt")
    dec = torch.load(dp, map_location="cpu")["model"] if os.path.exists(dp) else enc
    T.HP["vae"]["latent_channels"] = T.latent_width(enc)  # models of either width
    vae = T.make_vae().eval()
    vae.load_state_dict({k: (dec[k] if k.startswith(("decoder.", "post_quant_conv.")) else v) for k, v in enc.items()})
    _, held_out = scenes.split_identities()
    rng = random.Random(a.seed)
    scn = [scenes.make_scene(rng, held_out) for _ in range(a.n)]
    images = np.stack([s.image for s in scn])
    with torch.no_grad():
        rec = []
        for i in range(0, a.n, 50):
            z = vae.encode(T.to_m11(images[i:i + 50])).latent_dist.mean
            x = vae.decode(z).sample
            rec.append(((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    rec = np.concatenate(rec)
    mse = float(((rec.astype(np.float32) - images.astype(np.float32)) ** 2).mean())
    psnr = 10 * np.log10(255.0 ** 2 / mse)
    attr, _ = judges.load()
    rows = ["| images | " + " | ".join(ATTRS) + " | identity |", "|---|" + "---|" * (len(ATTRS) + 1)]
    for name, imgs in (("rendered", images), ("VAE round trip", rec)):
        hits = []
        for s, img in zip(scn, imgs):
            for ident, pos in zip(s.subjects, s.positions):
                p = judges.predict(attr, [judges.region(img, pos)])
                want = judges.attr_labels(ident)
                hits.append([float(p[x][0] == want[x]) for x in ATTRS])
        h = np.array(hits).mean(0)
        rows.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in h) + f" | {h.mean():.3f} |")
    print(f"{a.n} scenes of held-out identities ({sum(len(s.subjects) for s in scn)} subjects); round-trip PSNR {psnr:.1f} dB")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
