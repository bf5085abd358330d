"""Run in another environment (e.g. transformers 4.57.6): load a checkpoint with stock
``from_pretrained`` and save its logits and rotary cos/sin for the given lengths.

Usage: python compat_logits.py MODEL_DIR OUT.pt LENGTH [LENGTH ...]
Only torch and transformers are imported: the project need not be installed there.
"""

import sys

import torch
import transformers
from transformers import AutoModelForCausalLM


def main() -> None:
    model_dir, out = sys.argv[1], sys.argv[2]
    lengths = [int(x) for x in sys.argv[3:]]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    vocab = model.config.vocab_size
    result = {"transformers": transformers.__version__, "logits": {}, "cos": {}}
    with torch.no_grad():
        for length in lengths:
            ids = (torch.arange(length) * 7919 % vocab)[None]
            result["logits"][length] = model(input_ids=ids).logits[0]
            cos, _ = model.model.rotary_emb(torch.zeros(1), torch.arange(length)[None])
            result["cos"][length] = cos[0]
    torch.save(result, out)


if __name__ == "__main__":
    main()
