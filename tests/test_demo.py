"""The demo on the bundled trained model: the perplexity protocol, both exports as end-to-end
gates, and a deliberately broken export (factor order reversed) that the gates catch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from longrope_export.bake import BakeOptions, bake
from longrope_export.demo import RUNTIME_TOLERANCE, data_dir, held_out_halves, run_demo
from longrope_export.sources import load_spec_json
from validation.parity import run_parity
from validation.perplexity import perplexity


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "out"
    return out, run_demo(out)


def test_layout(demo) -> None:
    out, _ = demo
    for name in ("model/config.json", "model/longrope.json", "model.gguf", "onnx/model.onnx", "perplexity.png",
                 "reports/rope.json", "reports/parity-gguf.json", "reports/parity-gguf.xml",
                 "reports/parity-onnx.json", "reports/perplexity.json", "reports/runtimes.json",
                 "reports/passkey.json", "reports/summary.json"):
        assert (out / name).exists(), name
    assert (out / "perplexity.png").read_bytes()[:4] == b"\x89PNG"


def test_perplexity_protocol(demo) -> None:
    _, summary = demo
    table = summary["perplexity_at_8x"]
    assert len(table) == 5 and {"none", "pi", "ntk", "yarn"} <= set(table)
    for halves in table.values():
        for half in ("half1", "half2"):
            assert halves[half]["perplexity"] > 1 and 0 < halves[half]["stderr"] < halves[half]["perplexity"]
    assert summary["no_scaling_worse_at_8x_than_1x"]
    assert summary["ranking_half1"] == summary["ranking_half2"], (summary["ranking_half1"], summary["ranking_half2"])
    assert summary["ranking_half1"][-1] == "pi"  # PI without fine-tuning is worst at 8x (REFERENCE s.6)


def test_exports_are_end_to_end_gates(demo) -> None:
    out, summary = demo
    assert not summary["failures"]
    for item in summary["runtimes"]:
        assert item["relative_difference"] <= RUNTIME_TOLERANCE, item
    for name in ("gguf", "onnx"):
        assert json.loads((out / "reports" / f"parity-{name}.json").read_text())["passed"]


def test_reversed_factor_order_is_caught(demo, tmp_path: Path) -> None:
    from converters.gguf_writer import prepared_plan, write_gguf
    from validation.export_nll import LlamaCppNll

    out, summary = demo
    spec = load_spec_json(out / "reports" / "demo_factors.json")
    flipped = (spec.factors("long")[::-1],)
    reversed_spec = spec.replace(long_factors=flipped, short_factors=flipped)
    (tmp_path / "reversed.json").write_text(json.dumps(reversed_spec.to_dict()))
    options = BakeOptions(factors=tmp_path / "reversed.json")
    broken = bake(data_dir() / "demo_model", tmp_path / "broken", options).output
    with prepared_plan(broken, tmp_path / "broken.gguf", "f32", None, False) as plan:
        write_gguf(plan, tmp_path / "broken.gguf", False)
    # the spec gate: the broken export does not carry the reference's factors
    report = run_parity(out / "model", tmp_path / "broken.gguf")
    assert not report.spec_passed and not report.passed
    # the perplexity gate: far outside the 0.1% agreement of a correct export
    tokenizer = AutoTokenizer.from_pretrained(str(out / "model"))
    ids = held_out_halves(data_dir(), tokenizer, 2049)[0][: 4 * 2049]
    good = perplexity(LlamaCppNll(out / "model.gguf"), ids, 2048, "good").perplexity
    bad = perplexity(LlamaCppNll(tmp_path / "broken.gguf"), ids, 2048, "reversed").perplexity
    assert abs(bad - good) / good > 100 * RUNTIME_TOLERANCE, (good, bad)


def test_greedy_decoding_agrees_across_runtimes(demo) -> None:
    from validation.export_nll import LlamaCppNll, OnnxNll
    from validation.passkey import passkey_prompt
    from validation.torch_runtime import TorchRuntime

    out, _ = demo
    tokenizer = AutoTokenizer.from_pretrained(str(out / "model"))
    ids = passkey_prompt(tokenizer, 600, "12345", 0.5)  # past the original context: long factors
    want = TorchRuntime.load(out / "model").greedy(ids, 6)
    assert LlamaCppNll(out / "model.gguf").greedy(ids, 6) == want
    assert OnnxNll(out / "onnx").greedy(ids, 6) == want
