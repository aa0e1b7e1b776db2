"""Tokenizer parity corpus: prompts -> ids from transformers' CLIPTokenizer and open_clip's
SimpleTokenizer, built from the same vocabulary file (open_clip's bpe_simple_vocab_16e6.txt.gz).

Writes crate/tests/fixtures/tokenizer_corpus.json with, per prompt:
  - transformers: 77 ids (padding=max_length, truncation) of the marker-free prompt;
  - open_clip: 77 ids from open_clip.tokenize (pads with 0) of the marker-free prompt;
  - marker: for prompts with `<|image|>`, the ids after METHOD.md's marker handling
    (tokenizer with `<|image|>` added as a special token = id 49408; each marker removed, the
    token before it flagged) and the flagged positions; or the error kind.
"""

import gzip
import os

import open_clip
from transformers import CLIPTokenizer

from fctools.reference.common import FIXTURES, save_json

MARKER = "<|image|>"
MAX_LEN = 77


def vocab_path() -> str:
    return os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def hf_tokenizer() -> CLIPTokenizer:
    lines = gzip.open(vocab_path()).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    tok = CLIPTokenizer(vocab={v: i for i, v in enumerate(vocab)}, merges=merges)
    return tok


def corpus() -> list:
    subjects = ["man", "woman", "cat", "dog", "robot", "boy", "girl", "teddy bear", "mug", "astronaut"]
    contexts = [
        "on the beach", "in the snow", "in a forest", "in a night city", "in the desert",
        "underwater", "in space", "in a cozy room", "at sunset", "under the rain",
    ]
    out = []
    # Single- and two-subject prompts with markers.
    for i, s in enumerate(subjects):
        for j, c in enumerate(contexts[:6]):
            out.append(f"a {s} {MARKER} {c}")
        t = subjects[(i + 3) % len(subjects)]
        out.append(f"a {s} {MARKER} and a {t} {MARKER} {contexts[i % len(contexts)]}")
        out.append(f"A photo of a {s.upper()}{MARKER} playing, {contexts[(i + 2) % len(contexts)]}!")
    # Punctuation, digits, case, whitespace.
    out += [
        "a photo of a cat",
        "A PHOTO OF A CAT",
        "a   photo\tof\na cat  ",
        "  leading and trailing spaces  ",
        "don't stop, it's what we'll do; they've gone. I'm here & you'd know",
        "hello!!! what??? yes... no---maybe",
        "3.14159 is pi, 2024-11-27, 1,000,000 dollars, 42nd street",
        "room 101 at 9:30pm (the 2nd floor) [left] {right} <angle>",
        "email me: someone@example.com #hashtag $100 50% off ^_^ ~tilde~ `code` |pipe|",
        "a cat's toy; the dogs' bowls; o'clock",
        "C-3PO and R2-D2 in a galaxy far, far away",
        "x" * 10,
        "supercalifragilisticexpialidocious antidisestablishmentarianism",
        "a b c d e f g h i j k l m n o p q r s t u v w x y z",
        "0 1 2 3 4 5 6 7 8 9 10 11 12 1234567890",
        "",
        " ",
        "\n\t",
        "!!!",
        "&amp; &lt;b&gt; html entities &quot;quoted&quot;",
        "“curly quotes” and ‘single’ ones — em dash – en dash …",
        "café naïve résumé coöperate façade",
        "Ångström Øresund Łódź Ελληνικά Русский текст",
        "日本語のテキスト 中文文本 한국어 텍스트",
        "العربية עברית हिन्दी ไทย",
        "emoji: 😀 🐱 🐶 🚀 👩‍🚀 🏳️‍🌈 ❤️ 👍🏽",
        "a 🐱 on a 🏖️ beach",
        "ﬁne ligatures ﬂow",
        "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ １２３",
        "combining: e\u0301 a\u0308 n\u0303",
        "zero\u200bwidth space and non\u00a0breaking",
        "ΣΊΣΥΦΟΣ and ΟΔΟΣ final sigma",
        "İstanbul and ß straße",
        "<|startoftext|> literal special tokens <|endoftext|>",
        "<|ENDOFTEXT|> upper case special",
        "tabs\tand\u3000ideographic space",
        "a man <|image|> on the beach",
        "a man <|image|>on the beach",
        "a man<|image|> on the beach",
        "a man <|image|> and a woman <|image|> reading books in a park",
        "a teddy bear <|image|> next to a coffee mug <|image|> on a table",
        "two subjects: a cat <|image|>, a dog <|image|>; and a robot <|image|> with a boy <|image|>",
        "<|image|> marker first",
        "a cat <|image|><|image|> doubled",
        "a cat <|image|> <|image|> doubled with space",
        "a 🐱 <|image|> emoji subject",
        "a man <|IMAGE|> uppercase marker is plain text",
    ]
    long_words = " ".join(f"word{i}" for i in range(60))
    out += [
        "a very " + "very " * 80 + "long prompt",
        "a cat <|image|> " + "and more " * 40,
        "and more " * 40 + "a cat <|image|>",
        "a dog <|image|> " + long_words,
        " ".join(["the quick brown fox jumps over the lazy dog"] * 10),
        "a photo of " + ", ".join(str(i) for i in range(100)),
    ]
    # Styles and accessories, as in the paper's prompt list.
    styles = ["oil painting", "watercolor", "pixel art", "pencil sketch", "cubist", "anime style", "3d render", "studio ghibli style"]
    accessories = ["wearing a red hat", "with sunglasses", "wearing a santa hat", "with a rainbow scarf", "in a chef outfit", "in a police outfit"]
    actions = ["swimming", "riding a bike", "reading a book", "playing guitar", "cooking", "sleeping"]
    for k, st in enumerate(styles):
        out.append(f"a {st} of a {subjects[k % len(subjects)]} {MARKER}")
    for k, a in enumerate(accessories):
        out.append(f"a {subjects[(k + 1) % len(subjects)]} {MARKER} {a}")
    for k, a in enumerate(actions):
        out.append(f"a {subjects[(k + 2) % len(subjects)]} {MARKER} {a} {contexts[k]}")
    for k in range(60):
        s = subjects[k % len(subjects)]
        out.append(f"{s}{k} {contexts[k % len(contexts)]} #{k} ({k * 7 % 13}) small, on the left")
    return out


def marker_reference(tok, prompt: str):
    """METHOD.md: tokenize with the marker as a special token; drop each marker and flag the
    token before it; truncate content to 75 (+BOS/EOS); pad with EOS to 77."""
    ids = tok(prompt, add_special_tokens=True)["input_ids"]
    marker_id = tok.convert_tokens_to_ids(MARKER)
    clean, positions = [], []
    prev_marker = False
    for i in ids:
        if i == marker_id:
            if len(clean) <= 1:
                return {"error": "marker_at_start"}
            if prev_marker:
                return {"error": "adjacent_markers"}
            positions.append(len(clean) - 1)
            prev_marker = True
        else:
            clean.append(i)
            prev_marker = False
    eos = clean.pop()  # the EOS the tokenizer added
    clean = clean[: MAX_LEN - 1]
    if any(p >= MAX_LEN - 1 for p in positions):
        return {"error": "marker_truncated"}
    clean = clean + [eos]
    clean += [tok.pad_token_id] * (MAX_LEN - len(clean))
    return {"input_ids": clean, "subject_positions": positions}


def main():
    tok = hf_tokenizer()
    assert len(tok) == 49408, len(tok)
    marker_tok = hf_tokenizer()
    marker_tok.add_tokens([MARKER], special_tokens=True)
    assert marker_tok.convert_tokens_to_ids(MARKER) == 49408
    oc = open_clip.get_tokenizer("ViT-L-14")
    prompts = corpus()
    rows = []
    for p in prompts:
        plain = p.replace(MARKER, " ") if MARKER in p else p
        row = {
            "prompt": p,
            "plain": plain,
            "transformers": tok(plain, padding="max_length", max_length=MAX_LEN, truncation=True)["input_ids"],
            "open_clip": oc([plain])[0].tolist(),
        }
        if MARKER in p:
            row["marker"] = marker_reference(marker_tok, p)
        rows.append(row)
    assert tok("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    save_json(os.path.join(FIXTURES, "tokenizer_corpus.json"), {"marker": MARKER, "rows": rows})
    print(f"tokenizer corpus: {len(rows)} prompts")


if __name__ == "__main__":
    main()
