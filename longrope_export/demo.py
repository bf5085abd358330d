"""``demo``: the main job end to end on the bundled, really trained demo model.

Bakes LongRoPE factors for 8x the model's 256-token context, checks the rotation with
``validate rope``, measures held-out perplexity at 1x-8x for no scaling, PI, NTK, YaRN and the
LongRoPE factors on two disjoint halves of the held-out text, runs passkey retrieval at 1x and 8x,
and writes everything into a fixed layout:

    DIR/model/            the baked checkpoint (config.json, longrope.json, weights, tokenizer)
    DIR/reports/          rope.json, perplexity.json, passkey.json, summary.json
    DIR/perplexity.png    perplexity against context length, one curve per method
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from .bake import BakeOptions, bake
from .baselines import baseline_spec
from .errors import CheckFailed, InputError
from .spec import LongRoPESpec

SCALE = 8
LENGTHS = (256, 512, 1024, 2048)
METHODS = ("none", "pi", "ntk", "yarn")
MAX_TOKENS = 16384
PASSKEY_TRIALS = 5


def data_dir() -> Path:
    """The package data folder holding ``demo_model/`` and ``demo_eval.txt.gz``
    (``LONGROPE_DEMO_DATA`` points elsewhere, e.g. at a freshly trained model)."""
    override = os.environ.get("LONGROPE_DEMO_DATA")
    return Path(override) if override else Path(str(resources.files("longrope_export") / "data"))


def demo_factors(model_dir: Path, original: int) -> tuple[LongRoPESpec, str]:
    """The shipped 8x factors and their label: a searched file if present, else YaRN-initialised."""
    config = json.loads((model_dir / "config.json").read_text())
    rotary_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    spec = baseline_spec("longrope-init", rotary_dim=rotary_dim, rope_theta=float(config.get("rope_theta") or
                         config.get("rope_parameters", {}).get("rope_theta", 10000.0)),
                         original=original, target=SCALE * original)
    return spec, "LongRoPE (YaRN-initialised factors, not searched)"


def held_out_halves(data: Path) -> tuple[str, str]:
    text = gzip.decompress((data / "demo_eval.txt.gz").read_bytes()).decode("utf-8")
    middle = text.index("\n\n", len(text) // 2)
    return text[:middle], text[middle + 2:]


def run_demo(out: Path, force: bool = False, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the demo into ``out`` and return the summary (also written to reports/summary.json)."""
    import torch

    from validation.passkey import as_dicts as passkey_dicts
    from validation.passkey import passkey
    from validation.perplexity import as_dicts, perplexity, plot
    from validation.rope_check import check_rope
    from validation.torch_runtime import TorchRuntime

    say = progress or (lambda message: None)
    data = data_dir()
    base = data / "demo_model"
    if not (base / "model.safetensors").exists():
        raise InputError("the bundled demo model is missing", path=base, fix="reinstall longrope-export")
    if out.exists() and not force:
        raise InputError("output already exists", path=out, fix="pass --force or choose another -o")
    out.mkdir(parents=True, exist_ok=True)
    reports = out / "reports"
    reports.mkdir(exist_ok=True)
    original = json.loads((base / "config.json").read_text())["max_position_embeddings"]
    spec, label = demo_factors(base, original)
    spec_file = reports / "demo_factors.json"
    spec_file.write_text(json.dumps(spec.to_dict(), indent=2) + "\n")

    say(f"bake {label} for {SCALE}x ({original} -> {SCALE * original})")
    bake(base, out / "model", BakeOptions(factors=spec_file, force=True))
    rope_report = check_rope(out / "model")
    (reports / "rope.json").write_text(json.dumps(rope_report, indent=2) + "\n")
    if not rope_report["passed"]:
        raise CheckFailed("validate rope failed on the baked demo model", path=out / "model")

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out / "model"))
    halves = [torch.tensor(tokenizer(text)["input_ids"]) for text in held_out_halves(data)]
    runs: list[tuple[str, TorchRuntime]] = [(label, TorchRuntime.load(out / "model"))]
    for method in METHODS:
        other = baseline_spec(method, rotary_dim=spec.rotary_dim, rope_theta=spec.rope_theta,
                              original=original, target=SCALE * original)
        runs.append((method, TorchRuntime.load(base, spec=other)))
    points = {0: [], 1: []}  # type: dict[int, list]
    for half, ids in enumerate(halves):
        for name, runtime in runs:
            for length in LENGTHS:
                say(f"perplexity half {half + 1}: {name} @ {length}")
                points[half].append(perplexity(runtime, ids, length, name, max_tokens=MAX_TOKENS))
    plot(points[0] + [], out / "perplexity.png", "demo model, held-out half 1: perplexity vs context")
    (reports / "perplexity.json").write_text(json.dumps(
        {"halves": {str(h + 1): as_dicts(p) for h, p in points.items()}}, indent=2) + "\n")

    say("passkey at 1x and 8x")
    keys = [passkey(runs[0][1], tokenizer, length, PASSKEY_TRIALS, label) for length in (original, SCALE * original)]
    (reports / "passkey.json").write_text(json.dumps({"results": passkey_dicts(keys)}, indent=2) + "\n")
    summary = summarise(points, original, label)
    summary["passkey"] = {str(r.length): r.accuracy for r in keys}
    (reports / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def summarise(points: dict[int, list], original: int, label: str) -> dict[str, Any]:
    """Perplexity at 8x per method and half, the ranking on each half, and the sanity checks."""
    top = SCALE * original
    table: dict[str, dict[str, Any]] = {}
    rankings = []
    for half, items in points.items():
        at_top = {p.label: p for p in items if p.length == top}
        rankings.append(sorted(at_top, key=lambda name: at_top[name].perplexity))
        for name, p in at_top.items():
            table.setdefault(name, {})[f"half{half + 1}"] = {"perplexity": p.perplexity, "stderr": p.stderr}
    none_1x = next(p.perplexity for p in points[0] if p.label == "none" and p.length == original)
    none_8x = next(p.perplexity for p in points[0] if p.label == "none" and p.length == top)
    return {"perplexity_at_8x": table, "ranking_half1": rankings[0], "ranking_half2": rankings[1],
            "same_order_on_both_halves": rankings[0] == rankings[1],
            "no_scaling_worse_at_8x_than_1x": none_8x > none_1x, "longrope_label": label}
