"""The conditioning controls (attribute sliders, DECOR suppression), written from their papers'
formulas (docs/method.md, "Controls") on transformers' CLIPTextModel, and their fixtures.

The model is the tiny random-weight one of the pipeline fixtures (crate/tests/fixtures/pipeline/,
written by pipeline_ref.py); subjects are its real photos. Each case gives the two conditionings
the UNet would see, text-only and subject-augmented, with the controls applied.

- Attribute slider for subject j, words FROM -> TO, strength a:
      d = mean over templates T of  E(T + TO + noun)[noun] - E(T + FROM + noun)[noun]
      text_only[noun_j] += a * d        (then fusion reads the moved row)
- Suppression of TEXT at strength s (DECOR):
      E = text encoder output at TEXT's word tokens; V = its right singular vectors with a
      non-zero singular value (torch.linalg.svd);  X' = X - s X V V^T  on every row but BOS,
      applied to text-only and augmented after fusion.

Writes crate/tests/fixtures/controls/case<k>.json / .safetensors.
Run:  tools/.venv/bin/fc-controls-ref
"""

import os
import shutil

import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, CLIPVisionModelWithProjection

from fctools.reference.common import FIXTURES, save_json
from fctools.reference.fastcomposer_ref import Fuser
from fctools.reference.tokenizer_corpus import MARKER, hf_tokenizer, marker_reference

torch.set_grad_enabled(False)

MODEL = os.path.join(FIXTURES, "pipeline", "model")
OUT = os.path.join(FIXTURES, "controls")
TEMPLATES = ["a photo of a", "a close-up photo of the", "a picture of a", "a"]
MAX_LEN = 77

CASES = [
    dict(prompt=f"a woman {MARKER} and a cat {MARKER} in the snow", subjects=["astronaut", "chelsea"],
         attributes=[dict(subject=1, **{"from": "young"}, to="old", strength=1.5),
                     dict(subject=2, **{"from": "red"}, to="blue", strength=-0.7),
                     dict(subject=2, **{"from": "striped"}, to="spotted", strength=1.0)],
         suppress=[]),
    dict(prompt=f"a cat {MARKER} wearing a hat", subjects=["chelsea"], attributes=[],
         suppress=[dict(text="hat", strength=1.0)]),
    dict(prompt=f"a woman {MARKER} with a red scarf on a sunny day", subjects=["astronaut"],
         attributes=[dict(subject=1, **{"from": "happy"}, to="sad", strength=2.0)],
         suppress=[dict(text="red scarf", strength=0.5), dict(text="sunny weather", strength=1.0)]),
]


def load_models():
    text = CLIPTextModel.from_pretrained(os.path.join(MODEL, "text_encoder"), torch_dtype=torch.float32).eval()
    vision = CLIPVisionModelWithProjection.from_pretrained(
        os.path.join(MODEL, "image_encoder"), torch_dtype=torch.float32).eval()
    d = text.config.hidden_size
    fuser = Fuser(d).eval()
    sd = load_file(os.path.join(MODEL, "fuser", "model.safetensors"))
    fuser.load_state_dict({k: v.float() for k, v in sd.items()})
    return text, vision, fuser


def pad(tok, ids):
    ids = [tok.bos_token_id] + ids + [tok.eos_token_id]
    return ids + [tok.pad_token_id] * (MAX_LEN - len(ids))


def direction(tok, text, frm, to, noun):
    """mean_T E(T to noun)[noun] - E(T from noun)[noun]."""
    def at_noun(word):
        rows = []
        for t in TEMPLATES:
            ids = tok(f"{t} {word}", add_special_tokens=False)["input_ids"] + [noun]
            h = text(input_ids=torch.tensor([pad(tok, ids)])).last_hidden_state
            rows.append(h[0, len(ids)])  # the noun, after BOS
        return torch.stack(rows).mean(0)
    return at_noun(to) - at_noun(frm)


def svd_basis(tok, text, words):
    ids = tok(words, add_special_tokens=False)["input_ids"]
    e = text(input_ids=torch.tensor([pad(tok, ids)])).last_hidden_state[0, 1:1 + len(ids)]
    _, s, vh = torch.linalg.svd(e.double(), full_matrices=False)
    return vh[s > 1e-5 * s.max()].float()  # [r, D]


def decor(x, v, strength):
    """X - s X V V^T on every row but the start token's."""
    p = x @ v.T @ v
    p[:, 0] = 0
    return x - strength * p


def case(models, tok, pixel_values, c):
    text, vision, fuser = models
    r = marker_reference(tok, c["prompt"])
    ids, positions = r["input_ids"], r["subject_positions"]
    text_only = text(input_ids=torch.tensor([ids])).last_hidden_state.clone()
    for a in c["attributes"]:
        p = positions[a["subject"] - 1]
        text_only[0, p] += a["strength"] * direction(tok, text, a["from"], a["to"], ids[p])
    embeds = vision(pixel_values=torch.stack([pixel_values[s] for s in c["subjects"]])).image_embeds
    augmented = text_only.clone()
    pos = torch.tensor(positions)
    augmented[0, pos] = fuser(text_only[0, pos], embeds)
    for s in c["suppress"]:
        v = svd_basis(tok, text, s["text"])
        text_only = decor(text_only, v, s["strength"])
        augmented = decor(augmented, v, s["strength"])
    return text_only, augmented


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    models = load_models()
    tok = hf_tokenizer()
    tok.add_tokens([MARKER], special_tokens=True)
    pixel_values = load_file(os.path.join(FIXTURES, "pipeline", "preprocess.safetensors"))
    for k, c in enumerate(CASES):
        text_only, augmented = case(models, tok, pixel_values, c)
        save_json(os.path.join(OUT, f"case{k}.json"), c)
        save_file({"text_only": text_only.contiguous(), "augmented": augmented.contiguous()},
                  os.path.join(OUT, f"case{k}.safetensors"))
        print(f"case{k}: {c['prompt']!r}: |text_only| max {text_only.abs().max():.3f}")


if __name__ == "__main__":
    main()
