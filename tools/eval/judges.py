"""Independent judges for the default model's evaluation, trained only on ground-truth renders
of tools/dataset/scenes.py (never on generated images, sharing nothing with the generator).

- Attribute judge: a small CNN on the subject's region (the whole image for a subject in the
  centre, the left or right 60 % for a subject on that side) -> class, colour, secondary colour,
  pattern, accessory.
- Context judge: a small CNN on the whole image -> context (8), and for single-subject scenes the
  subject's position (left/center/right) and size (small/medium/large).

    python judges.py train [--n 12000] [--epochs 6]     -> tools/.data/judges.pt
    python judges.py accuracy                              (on fresh held-out renders)
"""

import argparse
import os
import random

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from fctools.dataset import scenes

HERE = os.path.dirname(os.path.abspath(__file__))


OUT = os.path.join(HERE, "..", ".data", "judges.pt")
RES = 64
HEADS = {
    "cls": len(scenes.CLASSES), "color": len(scenes.COLOR_NAMES), "secondary": len(scenes.COLOR_NAMES),
    "pattern": len(scenes.PATTERNS), "accessory": len(scenes.ACCESSORIES),
}
CTX_HEADS = {"context": len(scenes.CONTEXT_NAMES), "position": len(scenes.POSITIONS), "size": len(scenes.SIZES)}


def region(img: np.ndarray, where: str) -> np.ndarray:
    """The part of a scene where a subject said to be `where` is looked for."""
    w = img.shape[1]
    if where == "left":
        img = img[:, : int(w * 0.6)]
    elif where == "right":
        img = img[:, int(w * 0.4):]
    return np.asarray(Image.fromarray(img).resize((RES, RES), Image.BILINEAR))


def whole(img: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((RES, RES), Image.BILINEAR))


def to_tensor(batch):
    return torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float() / 127.5 - 1


class Net(nn.Module):
    def __init__(self, heads):
        super().__init__()
        c = [3, 32, 64, 128, 128]
        layers = []
        for a, b in zip(c, c[1:]):
            layers += [nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(), nn.MaxPool2d(2)]
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.heads = nn.ModuleDict({k: nn.Linear(128, n) for k, n in heads.items()})

    def forward(self, x):
        h = self.body(x)
        return {k: head(h) for k, head in self.heads.items()}


def attr_labels(ident):
    return {"cls": scenes.CLASSES.index(ident.cls), "color": scenes.COLOR_NAMES.index(ident.color),
            "secondary": scenes.COLOR_NAMES.index(ident.secondary), "pattern": scenes.PATTERNS.index(ident.pattern),
            "accessory": scenes.ACCESSORIES.index(ident.accessory)}


def make_data(n, seed):
    """Ground-truth renders: (attribute crops, labels), (whole images, context labels)."""
    rng = random.Random(seed)
    pool = list(range(len(scenes.IDENTITIES)))
    ax, ay, cx, cy = [], [], [], []
    for _ in range(n):
        s = scenes.make_scene(rng, pool)
        for ident, pos in zip(s.subjects, s.positions):
            ax.append(region(s.image, pos))
            ay.append(attr_labels(ident))
        cx.append(whole(s.image))
        single = len(s.subjects) == 1
        cy.append({"context": scenes.CONTEXT_NAMES.index(s.context),
                   "position": scenes.POSITIONS.index(s.positions[0]) if single else -100,
                   "size": scenes.SIZES.index(s.sizes[0]) if single else -100})
    return ax, ay, cx, cy


def fit(net, xs, ys, epochs, name):
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    n = len(xs)
    X = to_tensor(xs)
    Y = {k: torch.tensor([y[k] for y in ys]) for k in ys[0]}
    for ep in range(epochs):
        net.train()
        perm = torch.randperm(n)
        tot = 0.0
        for i in range(0, n, 128):
            idx = perm[i:i + 128]
            x = X[idx]
            # Generated images are softer than renders: blur and noise as augmentation.
            if random.random() < 0.5:
                x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
            x = x + 0.05 * torch.randn_like(x)
            out = net(x)
            loss = sum(F.cross_entropy(out[k], Y[k][idx], ignore_index=-100) for k in out)
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += loss.item() * len(idx)
        print(f"{name} epoch {ep + 1}: loss {tot / n:.4f}", flush=True)


def train(n, epochs):
    torch.manual_seed(0)
    ax, ay, cx, cy = make_data(n, seed=777)
    attr = Net(HEADS)
    ctx = Net(CTX_HEADS)
    fit(attr, ax, ay, epochs, "attributes")
    fit(ctx, cx, cy, epochs, "context")
    torch.save({"attr": attr.state_dict(), "ctx": ctx.state_dict()}, OUT)
    print("saved", OUT)


def load():
    s = torch.load(OUT, map_location="cpu")
    attr, ctx = Net(HEADS), Net(CTX_HEADS)
    attr.load_state_dict(s["attr"])
    ctx.load_state_dict(s["ctx"])
    return attr.eval(), ctx.eval()


@torch.no_grad()
def predict(net, images):
    out = net(to_tensor(images))
    return {k: v.argmax(1).tolist() for k, v in out.items()}


def accuracy_table(n=600, seed=4242):
    """Accuracy of each judge head on fresh ground-truth renders, as a markdown table."""
    attr, ctx = load()
    ax, ay, cx, cy = make_data(n, seed=seed)
    pa = predict(attr, ax)
    pc = predict(ctx, cx)
    rows = ["| judge | head | accuracy | chance |", "|---|---|---|---|"]
    for k in HEADS:
        acc = np.mean([p == y[k] for p, y in zip(pa[k], ay)])
        rows.append(f"| attribute | {k} | {acc:.3f} | {1 / HEADS[k]:.3f} |")
    for k in CTX_HEADS:
        pairs = [(p, y[k]) for p, y in zip(pc[k], cy) if y[k] != -100]
        rows.append(f"| context | {k} | {np.mean([p == y for p, y in pairs]):.3f} | {1 / CTX_HEADS[k]:.3f} |")
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["train", "accuracy"])
    ap.add_argument("--n", type=int, default=12000)
    ap.add_argument("--epochs", type=int, default=6)
    a = ap.parse_args()
    if a.cmd == "train":
        train(a.n, a.epochs)
    else:
        print(accuracy_table())


if __name__ == "__main__":
    main()
