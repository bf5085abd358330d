"""The exported file: custom op and function, metadata, reproducibility, size independent of the
target context, external data, inspect round trip, and bad input through the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import FACTORS
from onnx_cases import ORIGINAL, onnx_cases, onnx_root, token_ids

from converters.onnx_export import OnnxOptions, export_onnx, read_onnx_spec
from longrope_export import rope
from longrope_export.cli import main
from longrope_export.inspection import inspect_path, spec_summary

onnx = pytest.importorskip("onnx")

FIXTURES = (onnx_cases, onnx_root)  # session fixtures shared with the other ONNX test module


def test_graph_has_one_custom_node_per_rotary_use(onnx_cases, onnx_root) -> None:
    case = onnx_cases["llama"]
    path = case.export(onnx_root)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 10
    layers = 2  # tiny_models: num_hidden_layers
    rotary = [n for n in model.graph.node if (n.domain, n.op_type) == ("longrope", "LongRoPE")]
    assert len(rotary) == 2 * layers  # queries and keys of every layer
    (function,) = [f for f in model.functions if (f.domain, f.name) == ("longrope", "LongRoPE")]
    assert {n.domain for n in function.node} == {""}  # standard ops only
    assert "If" not in {n.op_type for n in function.node} | {n.op_type for n in model.graph.node}
    attrs = {a.name: a for a in rotary[0].attribute}
    np.testing.assert_array_equal(np.float32(attrs["long_inv_freq"].floats), rope.inv_freq(case.spec, "long").numpy())
    np.testing.assert_array_equal(np.float32(attrs["short_inv_freq"].floats), rope.inv_freq(case.spec, "short").numpy())
    assert attrs["original_max_position_embeddings"].i == ORIGINAL
    assert attrs["start_token"].i == case.spec.start_token == 4
    assert attrs["attention_factor"].f == pytest.approx(rope.attention_factor(case.spec), rel=1e-7)
    assert [i.name for i in model.graph.input][:3] == ["input_ids", "attention_mask", "position_ids"]
    assert [i.name for i in model.graph.input][3:5] == ["past_key_values.0.key", "past_key_values.0.value"]
    assert [o.name for o in model.graph.output][:3] == ["logits", "present.0.key", "present.0.value"]
    # No position tables: initializers are checkpoint weights or constants of a few elements.
    for tensor in model.graph.initializer:
        assert tensor.name.startswith("model.") or tensor.name.startswith("lm_head.") or (
            tensor.name.startswith("const.") and int(np.prod(tensor.dims)) <= 8), tensor.name


@pytest.mark.parametrize("rotary,domain", [("opset23", ""), ("contrib", "com.microsoft")])
def test_lowerings_use_their_kernel(onnx_cases, onnx_root, rotary: str, domain: str) -> None:
    model = onnx.load(str(onnx_cases["phi3"].export(onnx_root, rotary=rotary)))
    (function,) = model.functions
    assert ("RotaryEmbedding", domain) in {(n.op_type, n.domain) for n in function.node}
    assert sum(n.domain == "longrope" for n in model.graph.node) == 4


def test_metadata_records_policy_n_hat_and_spec(onnx_cases, onnx_root) -> None:
    case = onnx_cases["llama"]
    spec, props = read_onnx_spec(case.export(onnx_root))
    assert spec == case.spec
    assert props["longrope.switch_policy"] == "switch"
    assert props["longrope.start_token"] == "4"
    assert props["longrope.kv_policy"] == "recompute"
    assert props["longrope.kv_recompute_at_length"] == str(ORIGINAL + 1)
    assert "max(position_ids)+1" in props["longrope.switch_rule"]
    _, long_only = read_onnx_spec(onnx_cases["mistral"].export(onnx_root))
    assert long_only["longrope.kv_policy"] == "none-needed"


def test_export_is_reproducible(onnx_cases, tmp_path: Path) -> None:
    case = onnx_cases["phi3"]
    first = export_onnx(case.baked, tmp_path / "a", case.spec, OnnxOptions(rotary="contrib")).model_path
    second = export_onnx(case.baked, tmp_path / "b", case.spec, OnnxOptions(rotary="contrib")).model_path
    assert first.read_bytes() == second.read_bytes()


def test_external_data_runs_like_inline(onnx_cases, onnx_root, tmp_path: Path) -> None:
    from validation.onnx_runtime import OnnxCausalLM

    case = onnx_cases["mistral"]
    result = export_onnx(case.baked, tmp_path / "ext", case.spec, OnnxOptions(external_data=True))
    assert (tmp_path / "ext" / "model.onnx.data").stat().st_size > 10 * result.model_path.stat().st_size
    onnx.checker.check_model(str(result.model_path), full_check=True)
    ids = token_ids(64)
    np.testing.assert_array_equal(OnnxCausalLM(result.model_path).logits(ids),
                                  OnnxCausalLM(case.export(onnx_root)).logits(ids))


def test_size_does_not_grow_with_target(onnx_cases, tmp_path: Path) -> None:
    """8,192 and 2,097,152 targets through the CLI (base + --factors, baked on the fly): same size."""
    base = onnx_cases["llama"].baked.parent / "base"
    sizes = {}
    for target in (8192, 2_097_152):
        out = tmp_path / f"t{target}"
        result = CliRunner().invoke(main, [
            "convert", str(base), "--to", "onnx", "-o", str(out), "--json",
            "--factors", str(FACTORS / "2048k_la2_256k.csv"), "--short-factors", str(FACTORS / "4k_la2_256k.csv"),
            "--max-position-embeddings", str(target)])
        assert result.exit_code == 0, result.output
        sizes[target] = (out / "model.onnx").stat().st_size
        assert sorted(os.listdir(out)) == ["model.onnx"]
    assert abs(sizes[2_097_152] - sizes[8192]) < 1024, sizes


def test_inspect_reads_the_spec_back(onnx_cases, onnx_root) -> None:
    case = onnx_cases["llama"]
    path = case.export(onnx_root)
    report = inspect_path(path)
    assert report["kind"] == "onnx"
    assert report["longrope"] == spec_summary(case.spec)
    assert report["onnx"]["rotary_nodes"] == "4"
    result = CliRunner().invoke(main, ["inspect", str(path), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.output)["longrope"]["long_factors"] == [list(case.spec.long_factors[0])]
    text = CliRunner().invoke(main, ["inspect", str(path)])
    assert "n_hat 4" in text.output and "policy switch" in text.output


def _run_bad(args: list[str], out: Path) -> None:
    before = sorted(os.listdir(out.parent))
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert sorted(os.listdir(out.parent)) == before  # no partial output, no temporary folder left


def test_bad_input_exits_2_without_output(onnx_cases, tmp_path: Path) -> None:
    baked = str(onnx_cases["phi3"].baked)
    out = tmp_path / "out"
    _run_bad(["convert", baked, "--to", "onnx", "-o", str(out), "--rotary", "opset23", "--opset", "21"], out)
    alien = tmp_path / "gpt2"
    alien.mkdir()
    (alien / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 64}))
    _run_bad(["convert", str(alien), "--to", "onnx", "-o", str(out)], out)
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _run_bad(["convert", baked, "--to", "onnx", "-o", str(out)], out)
    assert os.listdir(out) == ["keep.txt"]
    result = CliRunner().invoke(main, ["convert", baked, "--to", "onnx", "-o", str(out), "--force"])
    assert result.exit_code == 0, result.output
    assert os.listdir(out) == ["model.onnx"]


def test_fp16_keeps_positions_and_angles_in_fp32(onnx_cases, onnx_root) -> None:
    model = onnx.load(str(onnx_cases["phi3"].export(onnx_root, label="fp16-function", dtype="fp16")))
    assert model.graph.input[3].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    (function,) = model.functions
    casts = [n for n in function.node if n.op_type == "Cast" and n.input[0] == "position_ids"]
    assert [a.i for n in casts for a in n.attribute if a.name == "to"] == [onnx.TensorProto.FLOAT]
    assert not any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for n in function.node for a in n.attribute)
    # cos/sin reach the model dtype only through CastLike, after Cos/Sin
    assert {n.op_type for n in function.node} >= {"Cos", "Sin", "CastLike"}
