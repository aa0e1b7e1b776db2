"""Evaluate the default model the way the paper does, on held-out identities, by a command anyone
can rerun:

    python evaluate.py [--model models/default.gguf] [--steps 25] [--out docs]

Generates images with the project's own pipeline (the `fastcomposer generate` CLI) for held-out
identities x 20 prompts x 2 seeds, single- and two-subject, for alpha in {0, 0.3, 0.5, 0.7, 1.0},
plus two baselines ("no subject image": the prompt without markers; "reference pasted": the
reference photo pasted at the prompt's position on a grey canvas). Scores them with the judges of
judges.py (trained on ground-truth renders only) and writes docs/EVAL.md and docs/eval_grid.png.
"""

import argparse
import concurrent.futures as cf
import json
import os
import random
import subprocess
import tempfile
import time

import numpy as np
from PIL import Image

from fctools.dataset import scenes
from fctools.eval import judges

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))


ALPHAS = [0.0, 0.3, 0.5, 0.7, 1.0]
ATTRS = ["color", "secondary", "pattern", "accessory"]
CHANCE_ATTRS = [1 / 8, 1 / 8, 1 / 4, 1 / 4]
CHANCE_ID = float(np.mean(CHANCE_ATTRS))


def prompts(held_out, n=20):
    """n single-subject and n two-subject prompts, each with its own held-out identities."""
    rng = random.Random(99)
    ids = held_out[:]
    rng.shuffle(ids)
    single, double = [], []
    for i in range(n):
        ident = scenes.IDENTITIES[ids[i % len(ids)]]
        ctx = scenes.CONTEXT_NAMES[i % len(scenes.CONTEXT_NAMES)]
        pos = ["left", "center", "right"][i % 3] if i % 2 == 0 else None
        size = ["small", "large", None][i % 3]
        adj = f"{size} " if size else ""
        where = f" on the {pos}" if pos and pos != "center" else ""
        single.append({"prompt": f"a {adj}{ident.cls} {scenes.MARKER}{where} {scenes.CONTEXTS[ctx]}",
                       "subjects": [ids[i % len(ids)]], "context": ctx,
                       "position": pos if where else None, "size": size, "regions": [pos or "center"]})
        a, b = ids[(2 * i + n) % len(ids)], ids[(2 * i + n + 1) % len(ids)]
        ia, ib = scenes.IDENTITIES[a], scenes.IDENTITIES[b]
        ctx2 = scenes.CONTEXT_NAMES[(i + 3) % len(scenes.CONTEXT_NAMES)]
        double.append({"prompt": f"a {ia.cls} {scenes.MARKER} on the left and a {ib.cls} {scenes.MARKER} on the right, {scenes.CONTEXTS[ctx2]}",
                       "subjects": [a, b], "context": ctx2, "position": None, "size": None, "regions": ["left", "right"]})
    return single, double


def references(subject_ids, workdir):
    """Each identity's reference photo, and its mask (`mask_<id>.png`, from the renderer)."""
    paths = {}
    for sid in sorted(set(subject_ids)):
        rng = random.Random(5000 + sid)
        img, mask = scenes.render_reference_with_mask(scenes.IDENTITIES[sid], rng)
        p = os.path.join(workdir, f"ref_{sid}.png")
        Image.fromarray(img).save(p)
        Image.fromarray(mask).save(os.path.join(workdir, f"mask_{sid}.png"))
        paths[sid] = p
    return paths


def generate(cli, model, job):
    args = [cli, "generate", "--model", model, "--prompt", job["prompt"], "--steps", str(job["steps"]),
            "--scheduler", job["scheduler"],
            "--guidance", str(job["guidance"]), "--alpha", str(job["alpha"]), "--seed", str(job["seed"]), "--out", job["out"]]
    for p in job["refs"]:
        args += ["--subject", p]
        if job.get("masks"):
            args += ["--mask", p.replace("ref_", "mask_")]
    if job.get("self_attention"):
        args += ["--self-attention", str(job["self_attention"])]
    args += job.get("extra", [])
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{job['prompt']}: {r.stderr}")
    return job["out"]


def pasted(job, refs_img):
    """Baseline: the reference photos pasted where the prompt puts the subjects, on grey."""
    canvas = Image.new("RGB", (scenes.SIZE, scenes.SIZE), (128, 128, 128))
    for ref, region in zip(refs_img, job["item"]["regions"]):
        size = scenes.SIZE // 2 if len(refs_img) > 1 else int(scenes.SIZE * 0.7)
        r = Image.open(ref).resize((size, size))
        x = {"left": 0, "center": (scenes.SIZE - size) // 2, "right": scenes.SIZE - size}[region]
        canvas.paste(r, (x, scenes.SIZE - size))
    canvas.save(job["out"])
    return job["out"]


def score(attr, ctx, item, image_path):
    img = np.asarray(Image.open(image_path).convert("RGB"))
    if img.shape[0] != scenes.SIZE:
        img = np.asarray(Image.fromarray(img).resize((scenes.SIZE, scenes.SIZE)))
    # identity: attributes recovered in the region the prompt names; two subjects: best matching, minimum
    preds = [judges.predict(attr, [judges.region(img, r)]) for r in item["regions"]]

    def hits(sid, pred):
        want = judges.attr_labels(scenes.IDENTITIES[sid])
        return [float(pred[a][0] == want[a]) for a in ATTRS]

    def frac(sid, pred):
        return float(np.mean(hits(sid, pred)))

    subj = item["subjects"]
    per_attr = None  # which attributes were recovered (single subject only)
    if len(subj) == 1:
        per_attr = hits(subj[0], preds[0])
        identity = float(np.mean(per_attr))
    else:
        straight = min(frac(subj[0], preds[0]), frac(subj[1], preds[1]))
        swapped = min(frac(subj[0], preds[1]), frac(subj[1], preds[0]))
        identity = max(straight, swapped)
    # prompt consistency: context, and position / size where the prompt says them
    c = judges.predict(ctx, [judges.whole(img)])
    checks = [c["context"][0] == scenes.CONTEXT_NAMES.index(item["context"])]
    if item["position"]:
        checks.append(c["position"][0] == scenes.POSITIONS.index(item["position"]))
    if item["size"]:
        checks.append(c["size"][0] == scenes.SIZES.index(item["size"]))
    return identity, float(np.mean(checks)), per_attr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "default.gguf"))
    ap.add_argument("--cli", default=os.path.join(ROOT, "target", "release", "fastcomposer"))
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--scheduler", default="ddim", help="ddim (the default model's) or lcm (its few-step model's)")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=20, help="prompts per kind (20; fewer for a quick check)")
    ap.add_argument("--alphas", default=",".join(map(str, ALPHAS)),
                    help="alphas to generate (a quick check during training: --alphas 0.7 --out /tmp/eval)")
    ap.add_argument("--self-attention", default="",
                    help="self-subject attention strengths to add at alpha 0.7, e.g. 0.5,1 (rows 'self-attention w')")
    ap.add_argument("--masks", action="store_true",
                    help="give each reference photo's mask (from the renderer) with it (--mask): every row uses them")
    a = ap.parse_args()
    strengths = [float(x) for x in a.self_attention.split(",") if x]
    alphas = [float(x) for x in a.alphas.split(",")]
    if 0.7 not in alphas:
        raise SystemExit("--alphas must include the default alpha 0.7")
    attr, ctx = judges.load()
    _, held_out = scenes.split_identities()
    single, double = prompts(held_out, a.prompts)
    work = tempfile.mkdtemp(prefix="fc-eval-")
    refs = references([s for it in single + double for s in it["subjects"]], work)
    jobs = []
    for kind, items in (("single", single), ("two", double)):
        for k, item in enumerate(items):
            for seed in (0, 1):
                base = dict(item=item, kind=kind, seed=seed, steps=a.steps, guidance=a.guidance, scheduler=a.scheduler,
                            refs=[refs[s] for s in item["subjects"]], masks=a.masks)
                for w in strengths:
                    jobs.append(dict(base, method=f"self-attention {w}", alpha=0.7, self_attention=w, prompt=item["prompt"],
                                     out=os.path.join(work, f"{kind}{k}_s{seed}_sa{w}.png")))
                for alpha in alphas:
                    jobs.append(dict(base, method=f"alpha {alpha}", alpha=alpha, prompt=item["prompt"],
                                     out=os.path.join(work, f"{kind}{k}_s{seed}_a{alpha}.png")))
                plain = item["prompt"].replace(f" {scenes.MARKER}", "")
                jobs.append(dict(base, method="no subject image", alpha=0.0, prompt=plain, refs=[],
                                 out=os.path.join(work, f"{kind}{k}_s{seed}_plain.png")))
                jobs.append(dict(base, method="reference pasted", alpha=0.0, prompt=None,
                                 out=os.path.join(work, f"{kind}{k}_s{seed}_paste.png")))
    t0 = time.time()
    with cf.ThreadPoolExecutor(a.workers) as pool:
        futs = {}
        for j in jobs:
            if j["method"] == "reference pasted":
                pasted(j, j["refs"])
            else:
                futs[pool.submit(generate, a.cli, a.model, j)] = j
        for i, f in enumerate(cf.as_completed(futs)):
            f.result()
            if i % 50 == 0:
                print(f"{i}/{len(futs)} images, {time.time() - t0:.0f}s", flush=True)
    results, attrs = {}, {}
    for j in jobs:
        ident, prompt, per_attr = score(attr, ctx, j["item"], j["out"])
        results.setdefault((j["method"], j["kind"]), []).append((ident, prompt))
        if per_attr is not None:
            attrs.setdefault(j["method"], []).append(per_attr)
    methods = [f"alpha {x}" for x in alphas] + [f"self-attention {w}" for w in strengths] + ["no subject image", "reference pasted"]
    rows = []
    summary = {}
    for m in methods:
        s = np.array(results[(m, "single")])
        t = np.array(results[(m, "two")])
        summary[m] = dict(identity_single=s[:, 0].mean(), prompt_single=s[:, 1].mean(),
                          identity_two=t[:, 0].mean(), prompt_two=t[:, 1].mean())
        rows.append(f"| {m} | {s[:, 0].mean():.3f} | {s[:, 1].mean():.3f} | {t[:, 0].mean():.3f} | {t[:, 1].mean():.3f} |")
        summary[m]["attributes_single"] = dict(zip(ATTRS, np.array(attrs[m]).mean(0)))
    attr_rows = ["| method | " + " | ".join(ATTRS) + " |", "|---|" + "---|" * len(ATTRS)]
    for m in methods:
        attr_rows.append(f"| {m} | " + " | ".join(f"{summary[m]['attributes_single'][x]:.3f}" for x in ATTRS) + " |")
    attr_rows.append("| chance | " + " | ".join(f"{c:.3f}" for c in CHANCE_ATTRS) + " |")
    # Sample grid: reference | generated (alpha 0.7), first seed, 8 single-subject prompts.
    tiles = []
    for k in range(min(8, len(single))):
        ref = Image.open(refs[single[k]["subjects"][0]]).resize((scenes.SIZE, scenes.SIZE))
        gen = Image.open(os.path.join(work, f"single{k}_s0_a0.7.png")).resize((scenes.SIZE, scenes.SIZE))
        txt = os.path.join(work, f"single{k}_s0_a0.0.png")
        txt = Image.open(txt if os.path.exists(txt) else os.path.join(work, f"single{k}_s0_plain.png")).resize((scenes.SIZE, scenes.SIZE))
        tiles.append(np.concatenate([np.asarray(ref), np.asarray(gen), np.asarray(txt)], 1))
    grid = np.concatenate(tiles, 0)
    os.makedirs(a.out, exist_ok=True)
    Image.fromarray(grid).save(os.path.join(a.out, "eval_grid.png"))
    with open(os.path.join(a.out, "eval_results.json"), "w") as f:
        json.dump({"summary": summary, "prompts": {"single": single, "two": double}, "steps": a.steps,
                   "scheduler": a.scheduler, "guidance": a.guidance, "model": os.path.relpath(a.model, ROOT)}, f, indent=1, default=float)
    table = "\n".join(["| method | identity (1 subject) | prompt (1 subject) | identity (2 subjects) | prompt (2 subjects) |",
                       "|---|---|---|---|---|"] + rows)
    chance = f"identity {CHANCE_ID:.3f} (colour 1/8, secondary 1/8, pattern 1/4, accessory 1/4); prompt: context 0.125, position / size 0.333"
    attr_table = "\n".join(attr_rows)
    print(table)
    print(attr_table)
    print(f"chance: {chance}")
    print(f"{len(futs)} images in {time.time() - t0:.0f}s; images in {work}")
    write_report(a, table, attr_table, chance, summary, len(futs), time.time() - t0)


def write_report(a, table, attr_table, chance, summary, n_images, seconds):
    """docs/EVAL.md: the table, how it was made, and the judges' own accuracy on fresh renders."""
    acc = judges.accuracy_table()
    default = summary["alpha 0.7"]
    bar_id, bar_prompt = default["identity_single"] >= 0.6, default["prompt_single"] >= 0.8
    machine = f"{os.cpu_count()} CPU cores"
    text = f"""# Evaluation of the default model

Written by `tools/.venv/bin/python tools/eval/evaluate.py` (judges: `tools/eval/judges.py train`),
{time.strftime('%Y-%m-%d', time.gmtime())}, {machine}, {n_images} generated images in {seconds / 60:.0f} min.
Model: `{os.path.relpath(a.model, ROOT)}`; {a.scheduler.upper()} {a.steps} steps, guidance {a.guidance}; prompts, seeds and
per-image settings in `eval_results.json`.{" Rows `self-attention w`: alpha 0.7 with self-subject attention at strength w (`--self-attention w`)." if a.self_attention else ""}{" Every row gives each reference photo's mask (`--mask`, from the renderer)." if a.masks else ""}

**Held-out identities only** (never seen in training): {a.prompts} single-subject prompts (context, and
position or size where the prompt says so) and {a.prompts} two-subject prompts (left / right), 2 seeds each.
Images come from the project's own pipeline (`fastcomposer generate`).

- *identity*: fraction of the reference identity's four attributes (colour, secondary colour,
  pattern, accessory) that an attribute judge recovers in the region the prompt names; two
  subjects: the minimum over the two, after matching.
- *prompt*: fraction of the prompt's checks (context; position / size where stated) a context
  judge confirms.
- Judges: small CNNs trained only on ground-truth renders of `tools/dataset/scenes.py` (all
  identities; never on generated images; no weights shared with the generator).
- Baselines: "no subject image" (the prompt without markers: text only), "reference pasted" (the
  reference photos pasted where the prompt puts them, on grey: identity without the scene).
- Chance: {chance}.

{table}

Default alpha (0.7), single subject: identity {default['identity_single']:.3f} (bar 0.6: {'met' if bar_id else '**not met**'}),
prompt {default['prompt_single']:.3f} (bar 0.8: {'met' if bar_prompt else '**not met**'}).

Identity by attribute (single subject: fraction of images whose subject region shows the
reference's colour, secondary colour, pattern, accessory):

{attr_table}

Judges' accuracy on 600 fresh ground-truth scenes (how far the judges themselves can be trusted):

{acc}

Samples (`eval_grid.png`; first seed, held-out identities): reference | alpha 0.7 | alpha 0 (text only).

![samples](eval_grid.png)
"""
    with open(os.path.join(a.out, "EVAL.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
