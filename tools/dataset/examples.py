"""The demo's example subject photos (web/examples/): reference renders of held-out identities
(never seen in training), one per class, as the default model expects its subjects.

    python tools/dataset/examples.py
"""

import os
import random

from PIL import Image

from fctools.dataset import scenes

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "web", "examples")


def main():
    _, held_out = scenes.split_identities()
    rng = random.Random(2026)
    os.makedirs(OUT, exist_ok=True)
    patterns = ["stripes", "dots", "checker", "dots"]
    for cls, pattern in zip(scenes.CLASSES, patterns):
        ids = [i for i in held_out if scenes.IDENTITIES[i].cls == cls and scenes.IDENTITIES[i].pattern == pattern
               and scenes.IDENTITIES[i].accessory != "none"]
        sid = rng.choice(ids)
        ident = scenes.IDENTITIES[sid]
        img = scenes.render_reference(ident, random.Random(sid))
        name = f"{ident.color}-{cls}"
        Image.fromarray(img).save(os.path.join(OUT, f"{name}.png"), optimize=True)
        print(name, ident)


if __name__ == "__main__":
    main()
