"""A small synthetic FastComposer checkpoint in the published format, for the converter's
`.bin` path: one `torch.save`d state dict with the prefixes `text_encoder.`, `image_encoder.`,
`vae.`, `unet.`, `postfuse_module.`, mixing fp32 and bf16 tensors like the published
`pytorch_model.bin`. Built from the pipeline fixture model (crate/tests/fixtures/pipeline/model).

Writes crate/tests/fixtures/pipeline/fastcomposer_tiny.bin
"""

import os
from collections import OrderedDict

import torch
from safetensors.torch import load_file

from fctools.reference.common import FIXTURES

MODEL = os.path.join(FIXTURES, "pipeline", "model")
PREFIX = {"text_encoder": "text_encoder.", "image_encoder": "image_encoder.", "vae": "vae.", "unet": "unet.", "fuser": "postfuse_module."}


def main():
    sd = OrderedDict()
    for part, prefix in PREFIX.items():
        d = os.path.join(MODEL, part)
        f = [x for x in os.listdir(d) if x.endswith(".safetensors")][0]
        for k, v in load_file(os.path.join(d, f)).items():
            # The published checkpoint keeps the UNet and the text encoder in bf16 and the rest
            # in fp32; do the same (these values are f16-exact, bf16 rounds some of them).
            dtype = torch.bfloat16 if part in ("unet", "text_encoder") else torch.float32
            key = f"text_model.{k}" if part == "text_encoder" else k  # SD1.5 naming
            sd[prefix + key] = v.to(dtype)
    # SD1.5 text encoders also carry this buffer.
    sd["text_encoder.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    out = os.path.join(FIXTURES, "pipeline", "fastcomposer_tiny.bin")
    torch.save(sd, out)
    print(f"wrote {out}: {len(sd)} tensors, {os.path.getsize(out)} bytes")


if __name__ == "__main__":
    main()
