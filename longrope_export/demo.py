"""``demo``: the main job end to end on the bundled, really trained demo model.

Bakes LongRoPE factors for 8x the model's 256-token context, checks the rotation
(``validate rope``), converts to GGUF (f32) and ONNX (fp32) and runs ``validate parity`` on both,
measures held-out perplexity at 1x-8x for no scaling, PI, NTK, YaRN and the LongRoPE factors on
two disjoint halves of the held-out text, checks that the 8x perplexity through llama.cpp and
onnxruntime equals the torch one within 0.1%, runs passkey retrieval at 1x and 8x, and writes:

    DIR/model/            the baked checkpoint (config.json, longrope.json, weights, tokenizer)
    DIR/model.gguf        the GGUF export (llama.cpp)
    DIR/onnx/model.onnx   the ONNX export (onnxruntime)
    DIR/reports/          rope.json, parity-gguf.json/.xml, parity-onnx.json/.xml, perplexity.json,
                          runtimes.json, passkey.json, summary.json, demo_factors.json
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
from .sources import load_spec_json
from .spec import LongRoPESpec

SCALE = 8
METHODS = ("none", "pi", "ntk", "yarn")
PASSKEY_TRIALS = 5
RUNTIME_TOLERANCE = 1e-3  # relative perplexity difference allowed between torch and the exports
FACTOR_FILE = "longrope_factors_8x.json"


def data_dir() -> Path:
    """The package data folder holding ``demo_model/`` and ``demo_eval.txt.gz``
    (``LONGROPE_DEMO_DATA`` points elsewhere, e.g. at a freshly trained model)."""
    override = os.environ.get("LONGROPE_DEMO_DATA")
    return Path(override) if override else Path(str(resources.files("longrope_export") / "data"))


def demo_factors(model_dir: Path, original: int) -> tuple[LongRoPESpec, str]:
    """The shipped 8x factors and their label: the searched file if present, else YaRN-initialised."""
    if (model_dir / FACTOR_FILE).exists():
        return load_spec_json(model_dir / FACTOR_FILE), "LongRoPE (searched factors)"
    config = json.loads((model_dir / "config.json").read_text())
    rotary_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    theta = config.get("rope_theta") or config.get("rope_parameters", {}).get("rope_theta", 10000.0)
    spec = baseline_spec("longrope-init", rotary_dim=rotary_dim, rope_theta=float(theta), original=original,
                         target=SCALE * original)
    return spec, "LongRoPE (YaRN-initialised factors, not searched)"


def held_out_halves(data: Path, tokenizer: Any, block: int) -> list[Any]:
    """Two disjoint halves of the held-out tokens: alternating blocks of ``block`` tokens, so both
    halves mix all held-out books alike."""
    import torch

    text = gzip.decompress((data / "demo_eval.txt.gz").read_bytes()).decode("utf-8")
    ids = torch.tensor(tokenizer(text)["input_ids"])
    blocks = list(ids.split(block))
    if len(blocks[-1]) < block:
        blocks.pop()
    return [torch.cat(blocks[0::2]), torch.cat(blocks[1::2])]


def _write(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def run_demo(out: Path, force: bool = False, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the demo into ``out``; returns the summary (also in reports/summary.json). Raises
    :class:`CheckFailed` after writing every report if a check failed."""
    from transformers import AutoTokenizer

    from validation.rope_check import check_rope

    say = progress or (lambda message: None)
    data = data_dir()
    base = data / "demo_model"
    if not (base / "model.safetensors").exists():
        raise InputError("the bundled demo model is missing", path=base, fix="reinstall longrope-export")
    if out.exists() and any(out.iterdir()) and not force:
        raise InputError("output already exists", path=out, fix="pass --force or choose another -o")
    reports = out / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    original = json.loads((base / "config.json").read_text())["max_position_embeddings"]
    target = SCALE * original
    spec, label = demo_factors(base, original)
    _write(reports / "demo_factors.json", spec.to_dict())

    say(f"bake {label} for {SCALE}x ({original} -> {target})")
    bake(base, out / "model", BakeOptions(factors=reports / "demo_factors.json", force=True))
    rope_report = check_rope(out / "model")
    _write(reports / "rope.json", rope_report)
    failures = [] if rope_report["passed"] else ["validate rope"]

    failures += _exports_and_parity(out, reports, say)
    tokenizer = AutoTokenizer.from_pretrained(str(out / "model"))
    halves = held_out_halves(data, tokenizer, target + 1)
    points = _perplexity(out, base, spec, label, halves, original, reports, say)
    runtimes = _runtime_perplexity(out, halves[0], target, points[0], label, say)
    _write(reports / "runtimes.json", runtimes)
    failures += [f"perplexity through {r['runtime']}" for r in runtimes["results"] if not r["passed"]]

    say("passkey at 1x and 8x")
    keys = _passkey(out, tokenizer, label, (original, target))
    _write(reports / "passkey.json", {"results": keys})
    summary = summarise(points, original, label)
    summary.update(passkey={str(r["length"]): r["accuracy"] for r in keys}, runtimes=runtimes["results"],
                   failures=failures, held_out_tokens=[len(h) for h in halves])
    _write(reports / "summary.json", summary)
    if failures:
        raise CheckFailed(f"demo checks failed: {', '.join(failures)} (reports in {reports})", path=out)
    return summary


def _exports_and_parity(out: Path, reports: Path, say: Callable[[str], None]) -> list[str]:
    from converters.gguf_writer import prepared_plan, write_gguf
    from converters.onnx_export import OnnxOptions, convert_to_onnx
    from validation.junit import parity_junit
    from validation.parity import run_parity

    say("convert to GGUF (f32) and ONNX (fp32)")
    with prepared_plan(out / "model", out / "model.gguf", "f32", None, True) as plan:
        write_gguf(plan, out / "model.gguf", True)
    convert_to_onnx(out / "model", out / "onnx", OnnxOptions(force=True))
    failures = []
    for name, candidate in (("gguf", out / "model.gguf"), ("onnx", out / "onnx")):
        say(f"validate parity {name}")
        report = run_parity(out / "model", candidate)
        _write(reports / f"parity-{name}.json", report.to_dict())
        parity_junit(report, reports / f"parity-{name}.xml")
        if not report.passed:
            failures.append(f"parity {name}")
    return failures


def _perplexity(out: Path, base: Path, spec: LongRoPESpec, label: str, halves: list[Any], original: int,
                reports: Path, say: Callable[[str], None]) -> dict[int, list[Any]]:
    from validation.perplexity import as_dicts, perplexity, plot
    from validation.torch_runtime import TorchRuntime

    runs = [(label, TorchRuntime.load(out / "model"))]
    for method in METHODS:
        other = baseline_spec(method, rotary_dim=spec.rotary_dim, rope_theta=spec.rope_theta, original=original,
                              target=SCALE * original)
        runs.append((method, TorchRuntime.load(base, spec=other)))
    lengths = [original * 2**k for k in range(SCALE.bit_length())]
    points: dict[int, list[Any]] = {0: [], 1: []}
    for half, ids in enumerate(halves):
        for name, runtime in runs:
            say(f"perplexity, held-out half {half + 1}: {name} at {', '.join(map(str, lengths))}")
            points[half] += [perplexity(runtime, ids, length, name) for length in lengths]
    plot(points[0], out / "perplexity.png", "demo model (held-out half 1): perplexity vs context length")
    _write(reports / "perplexity.json", {"halves": {str(h + 1): as_dicts(p) for h, p in points.items()}})
    return points


def _runtime_perplexity(out: Path, ids: Any, target: int, torch_points: list[Any], label: str,
                        say: Callable[[str], None]) -> dict[str, Any]:
    from validation.export_nll import LlamaCppNll, OnnxNll
    from validation.perplexity import perplexity

    reference = next(p for p in torch_points if p.label == label and p.length == target)
    results = []
    for name, runtime in (("llama.cpp", LlamaCppNll(out / "model.gguf")), ("onnxruntime", OnnxNll(out / "onnx"))):
        say(f"perplexity at {target} through {name}")
        point = perplexity(runtime, ids, target, label)
        rel = abs(point.perplexity - reference.perplexity) / reference.perplexity
        results.append({"runtime": name, "length": target, "perplexity": point.perplexity,
                        "torch_perplexity": reference.perplexity, "relative_difference": rel,
                        "tolerance": RUNTIME_TOLERANCE, "passed": rel <= RUNTIME_TOLERANCE})
    return {"held_out_half": 1, "results": results}


def _passkey(out: Path, tokenizer: Any, label: str, lengths: tuple[int, ...]) -> list[dict[str, Any]]:
    from validation.passkey import as_dicts, passkey
    from validation.torch_runtime import TorchRuntime

    runtime = TorchRuntime.load(out / "model")
    return as_dicts([passkey(runtime, tokenizer, length, PASSKEY_TRIALS, label) for length in lengths])


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
