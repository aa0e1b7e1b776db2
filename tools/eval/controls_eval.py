"""Evaluate the attribute sliders and suppression on the default model (docs/eval-controls/EVAL.md).

Same judges, held-out identities, prompts and seeds as evaluate.py (alpha 0.7, DDIM 25 steps,
guidance 5), images from the project's own CLI (`fastcomposer generate --attribute / --suppress`):

- sliders: for each direction (colour red -> blue, pattern plain -> striped, accessory plain ->
  hat) at strengths 0, 0.5, 1, 1.5, 2 on the single-subject prompts: the fraction of images whose
  subject the attribute judge gives the target (blue / stripes / hat), and identity on the other
  attributes (the fraction of the reference's other three attributes the judge recovers);
- suppression of `hat`: on held-out identities that wear a hat (the first `--prompts` of them,
  each in 4 contexts), the fraction of images whose subject is judged to wear one, without and
  with `--suppress hat:S`, and with `--suppress glasses:1` as a control.

Run:  OMP_NUM_THREADS=1 tools/.venv/bin/python tools/eval/controls_eval.py [--prompts 20]
"""

import argparse
import concurrent.futures as cf
import json
import os
import tempfile
import time

import numpy as np

from fctools.dataset import scenes
from fctools.eval import judges
from fctools.eval.evaluate import ATTRS, ROOT, generate, prompts, references

DIRECTIONS = [  # (attribute, from, to, target class)
    ("color", "red", "blue", scenes.COLOR_NAMES.index("blue")),
    ("pattern", "plain", "striped", scenes.PATTERNS.index("stripes")),
    ("accessory", "plain", "hat", scenes.ACCESSORIES.index("hat")),
]
STRENGTHS = [0.0, 0.5, 1.0, 1.5, 2.0]
SUPPRESS = [("hat", 0.0), ("hat", 0.5), ("hat", 1.0), ("glasses", 1.0)]  # glasses: a control word
HAT = scenes.ACCESSORIES.index("hat")


def judged(attr, item, path):
    from PIL import Image
    img = np.asarray(Image.open(path).convert("RGB"))
    pred = judges.predict(attr, [judges.region(img, item["regions"][0])])
    return {a: int(pred[a][0]) for a in ATTRS}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "default.gguf"))
    ap.add_argument("--cli", default=os.path.join(ROOT, "target", "release", "fastcomposer"))
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "eval-controls"))
    a = ap.parse_args()
    attr, _ = judges.load()
    _, held_out = scenes.split_identities()
    single, _ = prompts(held_out, a.prompts)
    hatted = [i for i in held_out if scenes.IDENTITIES[i].accessory == "hat"][: a.prompts]
    hat_items = []
    for n, sid in enumerate(hatted):
        for ctx in scenes.CONTEXT_NAMES[n % 2::2]:
            ident = scenes.IDENTITIES[sid]
            hat_items.append({"prompt": f"a {ident.cls} {scenes.MARKER} {scenes.CONTEXTS[ctx]}", "subjects": [sid],
                              "context": ctx, "position": None, "size": None, "regions": ["center"]})
    work = tempfile.mkdtemp(prefix="fc-controls-")
    refs = references([s for it in single + hat_items for s in it["subjects"]], work)
    jobs = []
    base = dict(steps=25, guidance=5.0, scheduler="ddim", alpha=0.7)
    for k, item in enumerate(single):
        for seed in (0, 1):
            for (name, frm, to, _) in DIRECTIONS:
                for s in STRENGTHS:
                    jobs.append(dict(base, kind="slider", direction=name, strength=s, item=item, seed=seed,
                                     prompt=item["prompt"], refs=[refs[item["subjects"][0]]],
                                     extra=["--attribute", f"1:{frm}:{to}:{s}"],
                                     out=os.path.join(work, f"s{k}_{seed}_{name}_{s}.png")))
    for k, item in enumerate(hat_items):
        for seed in (0, 1):
            for word, s in SUPPRESS:
                jobs.append(dict(base, kind="suppress", word=word, strength=s, item=item, seed=seed, prompt=item["prompt"],
                                 refs=[refs[item["subjects"][0]]], extra=["--suppress", f"{word}:{s}"],
                                 out=os.path.join(work, f"h{k}_{seed}_{word}_{s}.png")))
    t0 = time.time()
    with cf.ThreadPoolExecutor(a.workers) as pool:
        for i, _ in enumerate(cf.as_completed([pool.submit(generate, a.cli, a.model, j) for j in jobs])):
            if i % 100 == 0:
                print(f"{i}/{len(jobs)} images, {time.time() - t0:.0f}s", flush=True)
    seconds = time.time() - t0
    slider = {}
    for (name, _, _, target) in DIRECTIONS:
        for s in STRENGTHS:
            hits, others = [], []
            for j in (j for j in jobs if j["kind"] == "slider" and j["direction"] == name and j["strength"] == s):
                p = judged(attr, j["item"], j["out"])
                want = judges.attr_labels(scenes.IDENTITIES[j["item"]["subjects"][0]])
                hits.append(float(p[name] == target))
                others.append(np.mean([float(p[x] == want[x]) for x in ATTRS if x != name]))
            slider[(name, s)] = (float(np.mean(hits)), float(np.mean(others)), len(hits))
    suppress = {}
    for word, s in SUPPRESS:
        rate, others = [], []
        for j in (j for j in jobs if j["kind"] == "suppress" and j["word"] == word and j["strength"] == s):
            p = judged(attr, j["item"], j["out"])
            want = judges.attr_labels(scenes.IDENTITIES[j["item"]["subjects"][0]])
            rate.append(float(p["accessory"] == HAT))
            others.append(np.mean([float(p[x] == want[x]) for x in ATTRS if x != "accessory"]))
        suppress[(word, s)] = (float(np.mean(rate)), float(np.mean(others)), len(rate))
    # Reference rates: how often the judge gives the target on the references' own attributes.
    base_rate = {name: float(np.mean([judges.attr_labels(scenes.IDENTITIES[it["subjects"][0]])[name] == target
                                      for it in single])) for (name, _, _, target) in DIRECTIONS}
    rows = ["| direction | strength | target attribute judged | identity on the other attributes | images |",
            "|---|---|---|---|---|"]
    for (name, frm, to, _) in DIRECTIONS:
        for s in STRENGTHS:
            h, o, n = slider[(name, s)]
            rows.append(f"| {frm} → {to} ({name}) | {s} | {h:.3f} | {o:.3f} | {n} |")
    srows = ["| suppress | strength | judged wearing a hat | identity on the other attributes | images |",
             "|---|---|---|---|---|"]
    for word, s in SUPPRESS:
        r, o, n = suppress[(word, s)]
        srows.append(f"| `{word}` | {s} | {r:.3f} | {o:.3f} | {n} |")
    best = max(((slider[("color", s)][0], s) for s in STRENGTHS if slider[("color", s)][1] >= 0.5), default=(0.0, None))
    colour_bar = best[0] >= 0.5
    hat0, hat1 = suppress[("hat", 0.0)][0], suppress[("hat", 1.0)][0]
    hat_bar = hat0 > 0 and hat1 <= hat0 / 2
    control = suppress[("glasses", 1.0)][0]
    # Met only if it is the word that does it: projecting out the control word must not do the same.
    hat_verdict = ("met" if hat_bar and control > hat0 / 2 else
                   f"**not met** as a control of the hat: the numbers halve, but `glasses` at strength 1 takes the hat rate to {control:.3f} too"
                   if hat_bar else "**not met**")
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "eval_results.json"), "w") as f:
        json.dump({"slider": {f"{k[0]} {k[1]}": v for k, v in slider.items()},
                   "suppress": {f"{k[0]} {k[1]}": v for k, v in suppress.items()},
                   "reference_rate": base_rate, "prompts": single, "hat_prompts": hat_items}, f, indent=1)
    text = f"""# Controls on the default model: attribute sliders and suppression

Written by `tools/.venv/bin/python tools/eval/controls_eval.py` (judges: `tools/eval/judges.py train`),
{time.strftime('%Y-%m-%d', time.gmtime())}, {os.cpu_count()} CPU cores, {len(jobs)} generated images in {seconds / 60:.0f} min.
Model: `{os.path.relpath(a.model, ROOT)}`, DDIM 25 steps, guidance 5, alpha 0.7; held-out identities only,
{a.prompts} single-subject prompts (evaluate.py's), 2 seeds each; `fastcomposer generate --attribute 1:FROM:TO:S`.

**Sliders.** *target attribute judged*: fraction of images whose subject region the attribute
judge gives the direction's target (blue; stripes; a hat); among the references themselves that
fraction is colour {base_rate['color']:.3f}, pattern {base_rate['pattern']:.3f}, accessory
{base_rate['accessory']:.3f}. *identity on the other attributes*: fraction of the reference's other
three attributes the judge recovers.

{chr(10).join(rows)}

Bar (some strength moves ≥ 50 % of subjects to blue while the other attributes keep ≥ 0.5):
{'met' if colour_bar else '**not met**'} (best qualifying: {best[0]:.3f} at strength {best[1]}).

**Suppression** of `hat` on the held-out identities that wear one ({len(hatted)} identities, {len(hat_items)} prompts,
2 seeds): fraction of images whose subject is judged to wear a hat, and identity on the other three
attributes; `glasses` (another accessory's word) is a control: what projecting out any word does.

{chr(10).join(srows)}

Bar (suppression halves the hat rate): {hat_verdict} ({hat0:.3f} → {hat1:.3f} at strength 1).
"""
    with open(os.path.join(a.out, "EVAL.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
