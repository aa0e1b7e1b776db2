"""Procedural subject-driven scenes for training and evaluating the default model.

Deterministic from a seed. A *subject* is a class (cat, robot, bird, cup) with identity
attributes: primary colour, secondary colour, pattern and accessory (4 x 8 x 7 x 4 x 4 = 3,584
identities). A *scene* is 128x128 px: a context (8 of them) with 1-2 subjects at a position
(left / center / right) and size (small / medium / large), each subject's mask, and a caption
with a marker after each class noun, e.g.
    "a small cat <|image|> on the left in the snow"
    "a cat <|image|> on the left and a robot <|image|> on the right, underwater"
A subject's *reference* photo is rendered separately (another scale, pose and a plain or noise
background), as FastComposer's reference images are separate photos of the subject.

    python scenes.py --preview out.png     # a grid of samples
"""

import argparse
import random
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

MARKER = "<|image|>"
SIZE = 128
REF_SIZE = 112

CLASSES = ["cat", "robot", "bird", "cup"]
COLORS = {
    "red": (220, 40, 40), "orange": (245, 140, 30), "yellow": (240, 215, 40), "green": (50, 170, 60),
    "blue": (40, 90, 220), "purple": (140, 60, 190), "pink": (240, 120, 180), "white": (245, 245, 245),
}
COLOR_NAMES = list(COLORS)
PATTERNS = ["plain", "stripes", "dots", "checker"]
ACCESSORIES = ["none", "hat", "bowtie", "glasses"]
CONTEXTS = {
    "beach": "on the beach", "snow": "in the snow", "forest": "in a forest", "city": "in a night city",
    "desert": "in the desert", "underwater": "underwater", "space": "in space", "room": "in a room",
}
CONTEXT_NAMES = list(CONTEXTS)
POSITIONS = ["left", "center", "right"]
SIZES = ["small", "medium", "large"]
SIZE_FRAC = {"small": 0.34, "medium": 0.5, "large": 0.68}


@dataclass(frozen=True)
class Identity:
    cls: str
    color: str
    secondary: str
    pattern: str
    accessory: str

    def index(self) -> int:
        return identity_index(self)


def all_identities():
    out = []
    for c in CLASSES:
        for p in COLOR_NAMES:
            for s in COLOR_NAMES:
                if s == p:
                    continue
                for pat in PATTERNS:
                    for acc in ACCESSORIES:
                        out.append(Identity(c, p, s, pat, acc))
    return out


IDENTITIES = all_identities()
_INDEX = {ident: i for i, ident in enumerate(IDENTITIES)}


def identity_index(ident: Identity) -> int:
    return _INDEX[ident]


def split_identities(seed: int = 1234, held_out_frac: float = 0.1):
    """A fixed split: held-out identities are never seen in training."""
    rng = random.Random(seed)
    idx = list(range(len(IDENTITIES)))
    rng.shuffle(idx)
    n = int(len(idx) * held_out_frac)
    return sorted(idx[n:]), sorted(idx[:n])


# ----------------------------------------------------------------------------- drawing
def _pattern_layer(size, pattern, color, rng):
    """An RGBA layer of the pattern in `color` (transparent elsewhere)."""
    w, h = size
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    c = color + (255,)
    if pattern == "stripes":
        step = max(4, w // 6)
        for x in range(-h, w + h, step):
            d.line([(x, 0), (x + h, h)], fill=c, width=max(2, step // 3))
    elif pattern == "dots":
        step = max(5, w // 5)
        r = max(2, step // 4)
        for y in range(step // 2, h, step):
            for x in range(step // 2 + (y // step % 2) * step // 2, w, step):
                d.ellipse([x - r, y - r, x + r, y + r], fill=c)
    elif pattern == "checker":
        step = max(4, w // 5)
        for y in range(0, h, step):
            for x in range(0, w, step):
                if (x // step + y // step) % 2 == 0:
                    d.rectangle([x, y, x + step - 1, y + step - 1], fill=c)
    return layer


def _fill_shape(canvas, mask_img, box_shape, ident, rng, body_color=None):
    """Paint a body shape (given as an L mask) with the primary colour and the pattern."""
    w, h = canvas.size
    base = Image.new("RGBA", (w, h), COLORS[body_color or ident.color] + (255,))
    if ident.pattern != "plain":
        base.alpha_composite(_pattern_layer((w, h), ident.pattern, COLORS[ident.secondary], rng))
    canvas.paste(base, (0, 0), box_shape)
    mask_img.paste(255, (0, 0), box_shape)


def render_subject(ident: Identity, height: int, rng: random.Random, flip: bool = False):
    """The subject on a transparent canvas about `height` px tall. Returns (RGBA, L mask)."""
    H = max(12, int(height))
    W = H
    img = Image.new("RGBA", (W, H), (0, 0, 0, 0))
    mask = Image.new("L", (W, H), 0)
    outline = (30, 30, 30, 255)

    def shape(draw_fn):
        m = Image.new("L", (W, H), 0)
        draw_fn(ImageDraw.Draw(m))
        return m

    sec = COLORS[ident.secondary] + (255,)
    eye_y = None
    head = None
    if ident.cls == "cat":
        body = shape(lambda d: d.ellipse([0.15 * W, 0.45 * H, 0.85 * W, 0.98 * H], fill=255))
        _fill_shape(img, mask, body, ident, rng)
        d = ImageDraw.Draw(img)
        d.arc([0.6 * W, 0.35 * H, 1.0 * W, 0.9 * H], 270, 90, fill=COLORS[ident.color] + (255,), width=max(2, W // 14))
        head = [0.25 * W, 0.12 * H, 0.75 * W, 0.58 * H]
        hm = shape(lambda dd: (dd.ellipse(head, fill=255),
                               dd.polygon([(0.27 * W, 0.3 * H), (0.3 * W, 0.02 * H), (0.45 * W, 0.18 * H)], fill=255),
                               dd.polygon([(0.73 * W, 0.3 * H), (0.7 * W, 0.02 * H), (0.55 * W, 0.18 * H)], fill=255)))
        img.paste(Image.new("RGBA", (W, H), COLORS[ident.color] + (255,)), (0, 0), hm)
        mask.paste(255, (0, 0), hm)
        d.polygon([(0.31 * W, 0.24 * H), (0.32 * W, 0.08 * H), (0.41 * W, 0.18 * H)], fill=sec)
        d.polygon([(0.69 * W, 0.24 * H), (0.68 * W, 0.08 * H), (0.59 * W, 0.18 * H)], fill=sec)
        eye_y = 0.32 * H
        d.polygon([(0.47 * W, 0.42 * H), (0.53 * W, 0.42 * H), (0.5 * W, 0.46 * H)], fill=(240, 120, 140, 255))
    elif ident.cls == "robot":
        body = shape(lambda d: d.rectangle([0.2 * W, 0.45 * H, 0.8 * W, 0.95 * H], fill=255))
        _fill_shape(img, mask, body, ident, rng)
        d = ImageDraw.Draw(img)
        head = [0.28 * W, 0.12 * H, 0.72 * W, 0.45 * H]
        d.rectangle(head, fill=sec, outline=outline, width=max(1, W // 40))
        d.line([(0.5 * W, 0.12 * H), (0.5 * W, 0.03 * H)], fill=outline, width=max(1, W // 30))
        d.ellipse([0.46 * W, 0.0, 0.54 * W, 0.07 * H], fill=(230, 40, 40, 255))
        mask.paste(255, (0, 0), shape(lambda dd: (dd.rectangle(head, fill=255), dd.rectangle([0.46 * W, 0, 0.54 * W, 0.12 * H], fill=255))))
        for x0 in (0.08, 0.8):
            arm = [x0 * W, 0.5 * H, (x0 + 0.12) * W, 0.62 * H]
            d.rectangle(arm, fill=outline)
            mask.paste(255, (0, 0), shape(lambda dd, a=arm: dd.rectangle(a, fill=255)))
        eye_y = 0.26 * H
    elif ident.cls == "bird":
        body = shape(lambda d: d.ellipse([0.12 * W, 0.35 * H, 0.82 * W, 0.88 * H], fill=255))
        _fill_shape(img, mask, body, ident, rng)
        d = ImageDraw.Draw(img)
        head = [0.5 * W, 0.15 * H, 0.9 * W, 0.55 * H]
        d.ellipse(head, fill=COLORS[ident.color] + (255,))
        d.polygon([(0.88 * W, 0.3 * H), (1.0 * W, 0.36 * H), (0.88 * W, 0.42 * H)], fill=(250, 160, 20, 255))
        d.ellipse([0.22 * W, 0.48 * H, 0.6 * W, 0.75 * H], fill=sec)
        d.line([(0.4 * W, 0.86 * H), (0.38 * W, 0.99 * H)], fill=outline, width=max(1, W // 30))
        d.line([(0.55 * W, 0.86 * H), (0.57 * W, 0.99 * H)], fill=outline, width=max(1, W // 30))
        mask.paste(255, (0, 0), shape(lambda dd: (dd.ellipse(head, fill=255),
                                                   dd.polygon([(0.88 * W, 0.3 * H), (1.0 * W, 0.36 * H), (0.88 * W, 0.42 * H)], fill=255),
                                                   dd.rectangle([0.37 * W, 0.85 * H, 0.58 * W, 0.99 * H], fill=255))))
        eye_y = 0.3 * H
    else:  # cup
        body = shape(lambda d: d.polygon([(0.15 * W, 0.3 * H), (0.75 * W, 0.3 * H), (0.68 * W, 0.95 * H), (0.22 * W, 0.95 * H)], fill=255))
        _fill_shape(img, mask, body, ident, rng)
        d = ImageDraw.Draw(img)
        handle = [0.62 * W, 0.42 * H, 0.95 * W, 0.75 * H]
        d.ellipse(handle, outline=sec, width=max(2, W // 12))
        mask.paste(255, (0, 0), shape(lambda dd: dd.ellipse(handle, outline=255, width=max(2, W // 12))))
        d.ellipse([0.15 * W, 0.25 * H, 0.75 * W, 0.36 * H], fill=sec)
        head = [0.2 * W, 0.1 * H, 0.7 * W, 0.3 * H]
        eye_y = 0.55 * H
    d = ImageDraw.Draw(img)
    # Eyes (not on cups, whose "eyes" hold the glasses accessory on the body).
    cx = (head[0] + head[2]) / 2
    if ident.cls != "cup":
        for dx in (-0.09, 0.09):
            r = max(1.5, W * 0.035)
            d.ellipse([cx + dx * W - r, eye_y - r, cx + dx * W + r, eye_y + r], fill=(20, 20, 20, 255))
    # Accessories.
    acc_mask = Image.new("L", (W, H), 0)
    am = ImageDraw.Draw(acc_mask)
    if ident.accessory == "hat":
        top = head[1]
        brim = [cx - 0.22 * W, top - 0.03 * H, cx + 0.22 * W, top + 0.02 * H]
        crown = [cx - 0.13 * W, top - 0.2 * H, cx + 0.13 * W, top - 0.02 * H]
        for dd, col in ((d, (25, 25, 25, 255)), (am, 255)):
            dd.rectangle(brim, fill=col)
            dd.rectangle(crown, fill=col)
        d.rectangle([crown[0], crown[3] - 0.05 * H, crown[2], crown[3] - 0.02 * H], fill=(200, 30, 30, 255))
    elif ident.accessory == "bowtie":
        y = head[3] if ident.cls != "cup" else 0.62 * H
        pts1 = [(cx, y), (cx - 0.14 * W, y - 0.07 * H), (cx - 0.14 * W, y + 0.07 * H)]
        pts2 = [(cx, y), (cx + 0.14 * W, y - 0.07 * H), (cx + 0.14 * W, y + 0.07 * H)]
        for dd, col in ((d, (200, 20, 20, 255)), (am, 255)):
            dd.polygon(pts1, fill=col)
            dd.polygon(pts2, fill=col)
    elif ident.accessory == "glasses":
        r = 0.08 * W
        for dx in (-0.1, 0.1):
            box = [cx + dx * W - r, eye_y - r, cx + dx * W + r, eye_y + r]
            d.ellipse(box, outline=(10, 10, 10, 255), width=max(2, W // 25))
            am.ellipse(box, outline=255, width=max(2, W // 25))
        d.line([(cx - 0.1 * W + r, eye_y), (cx + 0.1 * W - r, eye_y)], fill=(10, 10, 10, 255), width=max(1, W // 40))
    mask.paste(255, (0, 0), acc_mask)
    if flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
        mask = mask.transpose(Image.FLIP_LEFT_RIGHT)
    return img, mask


def _gradient(top, bottom, h=SIZE, w=SIZE):
    t = np.linspace(0, 1, h)[:, None, None]
    a = np.array(top, dtype=np.float32)[None, None]
    b = np.array(bottom, dtype=np.float32)[None, None]
    return np.repeat(a * (1 - t) + b * t, w, axis=1)


def render_context(ctx: str, rng: random.Random) -> Image.Image:
    j = lambda c, s=18: tuple(int(np.clip(v + rng.uniform(-s, s), 0, 255)) for v in c)
    horizon = int(SIZE * rng.uniform(0.45, 0.62))
    arr = np.zeros((SIZE, SIZE, 3), np.float32)
    if ctx == "beach":
        arr[:] = _gradient(j((120, 190, 250)), j((200, 230, 255)))
        arr[horizon - 14:horizon] = j((30, 120, 200))
        arr[horizon:] = _gradient(j((235, 210, 150)), j((220, 190, 130)), SIZE - horizon)
    elif ctx == "snow":
        arr[:] = _gradient(j((170, 200, 230)), j((220, 235, 250)))
        arr[horizon:] = _gradient(j((245, 248, 255), 8), j((225, 232, 245), 8), SIZE - horizon)
    elif ctx == "forest":
        arr[:] = _gradient(j((90, 150, 90)), j((40, 100, 50)))
        arr[horizon:] = _gradient(j((60, 110, 40)), j((40, 80, 30)), SIZE - horizon)
    elif ctx == "city":
        arr[:] = _gradient(j((10, 15, 50)), j((30, 30, 80)))
        arr[horizon:] = j((40, 40, 50))
    elif ctx == "desert":
        arr[:] = _gradient(j((250, 200, 120)), j((250, 225, 170)))
        arr[horizon:] = _gradient(j((225, 160, 80)), j((200, 130, 60)), SIZE - horizon)
    elif ctx == "underwater":
        arr[:] = _gradient(j((30, 140, 200)), j((10, 50, 110)))
    elif ctx == "space":
        arr[:] = j((5, 5, 20), 5)
    else:  # room
        arr[:] = j((200, 180, 150))
        arr[horizon:] = _gradient(j((140, 95, 60)), j((110, 70, 40)), SIZE - horizon)
    img = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    if ctx == "beach":
        cx = rng.uniform(10, SIZE - 10)
        d.ellipse([cx - 9, 8, cx + 9, 26], fill=(255, 240, 120))
    elif ctx == "snow":
        for _ in range(40):
            x, y = rng.uniform(0, SIZE), rng.uniform(0, SIZE)
            d.ellipse([x - 1.2, y - 1.2, x + 1.2, y + 1.2], fill=(255, 255, 255))
        for _ in range(2):
            x = rng.uniform(0, SIZE)
            d.polygon([(x - 30, horizon), (x, horizon - rng.uniform(20, 40)), (x + 30, horizon)], fill=(235, 240, 250))
    elif ctx == "forest":
        for _ in range(rng.randint(4, 7)):
            x = rng.uniform(0, SIZE)
            w = rng.uniform(5, 10)
            d.rectangle([x, horizon - 70, x + w, horizon + 6], fill=j((90, 60, 30)))
            d.ellipse([x - 18, horizon - 95, x + w + 18, horizon - 50], fill=j((30, 110, 40)))
    elif ctx == "city":
        x = 0
        while x < SIZE:
            w = rng.uniform(14, 26)
            top = horizon - rng.uniform(20, 60)
            d.rectangle([x, top, x + w, horizon], fill=j((25, 25, 35), 6))
            for wy in range(int(top) + 4, horizon - 3, 7):
                for wx in range(int(x) + 3, int(x + w) - 3, 6):
                    if rng.random() < 0.5:
                        d.rectangle([wx, wy, wx + 2, wy + 3], fill=(250, 220, 100))
            x += w + rng.uniform(1, 4)
        d.ellipse([100, 10, 114, 24], fill=(240, 240, 210))
    elif ctx == "desert":
        cx = rng.uniform(15, SIZE - 15)
        d.ellipse([cx - 12, 10, cx + 12, 34], fill=(255, 250, 200))
        for _ in range(2):
            x = rng.uniform(0, SIZE)
            d.ellipse([x - 50, horizon - 12, x + 50, horizon + 20], fill=j((230, 170, 90)))
        x = rng.uniform(10, SIZE - 10)
        d.rectangle([x, horizon - 30, x + 5, horizon + 5], fill=(60, 140, 60))
    elif ctx == "underwater":
        for _ in range(12):
            x, y, r = rng.uniform(0, SIZE), rng.uniform(0, SIZE), rng.uniform(1.5, 4)
            d.ellipse([x - r, y - r, x + r, y + r], outline=(200, 230, 255), width=1)
        for _ in range(4):
            x = rng.uniform(0, SIZE)
            d.line([(x, SIZE), (x + rng.uniform(-8, 8), SIZE - rng.uniform(25, 50))], fill=(40, 160, 80), width=3)
    elif ctx == "space":
        for _ in range(60):
            x, y = rng.uniform(0, SIZE), rng.uniform(0, SIZE)
            v = rng.randint(150, 255)
            d.point((x, y), fill=(v, v, v))
        cx, cy, r = rng.uniform(0, SIZE), rng.uniform(0, 50), rng.uniform(10, 20)
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=j((180, 90, 60)))
    else:
        x = rng.uniform(15, SIZE - 55)
        d.rectangle([x, 12, x + 40, 48], fill=(160, 210, 250), outline=(255, 255, 255), width=3)
        d.line([(x + 20, 12), (x + 20, 48)], fill=(255, 255, 255), width=2)
    return img


# ----------------------------------------------------------------------------- scenes
@dataclass
class Scene:
    image: np.ndarray          # [SIZE, SIZE, 3] uint8
    masks: list                # per subject [SIZE, SIZE] uint8 (0/255)
    refs: list                 # per subject [REF_SIZE, REF_SIZE, 3] uint8
    caption: str
    subjects: list             # Identity per subject, in marker order
    context: str
    positions: list            # per subject
    sizes: list                # per subject


def caption_for(subjects, context, positions, sizes, say_position, say_size):
    parts = []
    for ident, pos, size in zip(subjects, positions, sizes):
        adj = f"{size} " if say_size and size != "medium" else ""
        where = f" on the {pos}" if say_position and pos != "center" else ""
        parts.append(f"a {adj}{ident.cls} {MARKER}{where}")
    subj = " and ".join(parts)
    return f"{subj}, {CONTEXTS[context]}" if len(subjects) > 1 else f"{subj} {CONTEXTS[context]}"


def render_reference(ident: Identity, rng: random.Random) -> np.ndarray:
    """The subject alone: another scale and pose, on a plain or noise background."""
    return render_reference_with_mask(ident, rng)[0]


def render_reference_with_mask(ident: Identity, rng: random.Random):
    """`render_reference` (the same draws from `rng`) and the subject's mask (L, 255 = subject)."""
    if rng.random() < 0.5:
        bg = Image.new("RGB", (REF_SIZE, REF_SIZE), tuple(rng.randint(90, 230) for _ in range(3)))
    else:
        bg = Image.fromarray(np.random.default_rng(rng.randint(0, 2**31)).integers(0, 256, (REF_SIZE, REF_SIZE, 3), dtype=np.uint8))
    h = int(REF_SIZE * rng.uniform(0.6, 0.9))
    sub, m = render_subject(ident, h, rng, flip=rng.random() < 0.5)
    angle = rng.uniform(-15, 15)
    sub = sub.rotate(angle, resample=Image.BILINEAR, expand=False)
    x = (REF_SIZE - sub.width) // 2 + rng.randint(-6, 6)
    y = (REF_SIZE - sub.height) // 2 + rng.randint(-6, 6)
    bg.paste(sub, (x, y), sub)
    mask = Image.new("L", (REF_SIZE, REF_SIZE), 0)
    mask.paste(sub.getchannel("A"), (x, y))
    return np.asarray(bg), np.asarray(mask)


def make_scene(rng: random.Random, identity_pool, n_subjects=None, context=None) -> Scene:
    n = n_subjects or (1 if rng.random() < 0.6 else 2)
    ctx = context or rng.choice(CONTEXT_NAMES)
    subjects = [IDENTITIES[rng.choice(identity_pool)] for _ in range(n)]
    if n == 1:
        positions = [rng.choice(POSITIONS)]
        sizes = [rng.choice(SIZES)]
    else:
        positions = ["left", "right"]
        sizes = [rng.choice(["small", "medium"]) for _ in range(2)]
    img = render_context(ctx, rng)
    masks = []
    ground = int(SIZE * rng.uniform(0.82, 0.95))
    for ident, pos, size in zip(subjects, positions, sizes):
        h = int(SIZE * SIZE_FRAC[size] * rng.uniform(0.9, 1.1))
        sub, m = render_subject(ident, h, rng, flip=rng.random() < 0.5)
        cx = {"left": 0.27, "center": 0.5, "right": 0.73}[pos] * SIZE + rng.uniform(-6, 6)
        x = int(cx - sub.width / 2)
        y = int(min(ground, SIZE) - sub.height)
        img.paste(sub, (x, y), sub)
        full = Image.new("L", (SIZE, SIZE), 0)
        full.paste(m, (x, y), m)
        masks.append(np.asarray(full))
    say_position = n == 2 or rng.random() < 0.6
    say_size = n == 1 and rng.random() < 0.6
    caption = caption_for(subjects, ctx, positions, sizes, say_position, say_size)
    refs = [render_reference(s, rng) for s in subjects]
    return Scene(np.asarray(img), masks, refs, caption, subjects, ctx, positions, sizes)


def preview(path: str, seed: int = 0, n: int = 16):
    rng = random.Random(seed)
    train, _ = split_identities()
    tiles = []
    for i in range(n):
        s = make_scene(rng, train)
        row = [s.image] + [np.asarray(Image.fromarray(r).resize((SIZE, SIZE))) for r in s.refs]
        while len(row) < 3:
            row.append(np.zeros_like(s.image))
        tiles.append(np.concatenate(row, 1))
        print(i, s.caption, [asdict(x) for x in s.subjects])
    grid = np.concatenate(tiles, 0)
    Image.fromarray(grid).save(path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preview", default="/tmp/scenes.png")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(len(IDENTITIES), "identities")
    preview(a.preview, a.seed, 8)


if __name__ == "__main__":
    main()
