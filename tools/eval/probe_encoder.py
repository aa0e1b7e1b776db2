"""How much of a subject's identity the image encoder of a training checkpoint carries: a linear
probe per attribute on its projected embedding of reference photos (3,000 to fit, 1,000 to
test, all from the training scenes' cache). A diagnostic for the training, not part of the
evaluation: it looks at the encoder alone, not at generated images.

    tools/.venv/bin/python tools/eval/probe_encoder.py [--checkpoint tools/.data/train/fc.pt]
"""

import argparse
import os

import torch
import torch.nn.functional as F

from fctools.train import models as T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=os.path.join(T.DEFAULT_OUT, "fc.pt"))
    ap.add_argument("--weights", default="ema", choices=["ema", "model"])
    a = ap.parse_args()
    torch.manual_seed(0)
    d, c = T.load_data()
    s = torch.load(a.checkpoint, map_location="cpu")
    models = T.Models()
    models.load_state_dict(s[a.weights])
    models.eval()
    n_fit, n_test = 3000, 1000
    n = n_fit + n_test
    refs = d["refs"][:n, 0]
    with torch.no_grad():
        emb = torch.cat([models.vision(pixel_values=T.ref_pixels(refs[i:i + 250])).image_embeds for i in range(0, n, 250)])
    x = (emb - emb.mean(0)) / (emb.std(0) + 1e-6)
    labels = T.attribute_labels([c["meta"][i]["subjects"][0] for i in range(n)])
    print(f"checkpoint {a.checkpoint} (fc step {s['step']}, {a.weights} weights)")
    for attr, y in labels.items():
        k = len(T.ATTRIBUTES[attr])
        w = torch.zeros(x.shape[1], k, requires_grad=True)
        b = torch.zeros(k, requires_grad=True)
        opt = torch.optim.Adam([w, b], lr=0.01)
        for _ in range(300):
            opt.zero_grad()
            loss = F.cross_entropy(x[:n_fit] @ w + b, y[:n_fit]) + 1e-3 * (w ** 2).sum()
            loss.backward()
            opt.step()
        acc = float(((x[n_fit:] @ w + b).argmax(1) == y[n_fit:]).float().mean())
        print(f"  {attr:10s} linear-probe accuracy {acc:.3f} (chance {1 / k:.3f})")


if __name__ == "__main__":
    main()
