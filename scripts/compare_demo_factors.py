"""Held-out perplexity at 8x (2048 tokens) of the searched demo factors against the baselines.

Reads only the held-out books (``demo_eval.txt.gz``), cuts them into non-overlapping 2049-token
windows (all of them) and reports, per method, perplexity +- standard error, the same on the even
and the odd windows (two disjoint halves), and on how many windows it beats YaRN and the
YaRN-initialised LongRoPE factors (``longrope-init``).

    python scripts/compare_demo_factors.py [--factors longrope_export/data/demo_model/longrope_factors_8x.json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from longrope_export.baselines import baseline_spec  # noqa: E402
from longrope_export.spec import LongRoPESpec  # noqa: E402
from validation.perplexity import perplexity  # noqa: E402
from validation.torch_runtime import TorchRuntime  # noqa: E402

DATA = ROOT / "longrope_export" / "data"
MODEL = DATA / "demo_model"
LENGTH = 2048


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factors", type=Path, default=MODEL / "longrope_factors_8x.json")
    parser.add_argument("--json", type=Path, help="Also write the numbers here.")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    torch.set_num_threads(1)  # a second 2-thread process on 2 cores makes both 5x slower
    from transformers import AutoTokenizer

    text = gzip.decompress((DATA / "demo_eval.txt.gz").read_bytes()).decode("utf-8")
    ids = torch.tensor(AutoTokenizer.from_pretrained(str(MODEL))(text)["input_ids"])
    searched = LongRoPESpec.from_dict(json.loads(args.factors.read_text()), str(args.factors))
    specs = {"searched": searched}
    for method in ("yarn", "longrope-init", "ntk", "pi", "none"):
        specs[method] = baseline_spec(method, rotary_dim=searched.rotary_dim, rope_theta=searched.rope_theta,
                                      original=searched.original_max_position_embeddings, target=LENGTH)
    points = {name: perplexity(TorchRuntime.load(MODEL, spec=spec), ids, LENGTH, name) for name, spec in specs.items()}
    yarn, init = points["yarn"].window_nll, points["longrope-init"].window_nll
    rows = {}
    print(f"held-out perplexity at {LENGTH} ({points['yarn'].windows} windows, {points['yarn'].tokens} tokens)")
    for name, point in points.items():
        halves = [math.exp(sum(point.window_nll[h::2]) / len(point.window_nll[h::2])) for h in (0, 1)]
        wins = sum(a < b for a, b in zip(point.window_nll, yarn, strict=True))
        wins_init = sum(a < b for a, b in zip(point.window_nll, init, strict=True))
        rows[name] = {"perplexity": point.perplexity, "stderr": point.stderr, "even_windows": halves[0],
                      "odd_windows": halves[1], "windows_beating_yarn": wins,
                      "windows_beating_longrope_init": wins_init, "windows": point.windows}
        print(f"  {name:<14} {point.perplexity:7.2f} +- {point.stderr:.2f}   even {halves[0]:7.2f}   "
              f"odd {halves[1]:7.2f}   beats YaRN / longrope-init on {wins} / {wins_init} of {point.windows} windows")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
