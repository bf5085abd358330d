"""gguf-patch on GGUF files made without LongRoPE by llama.cpp's own converter (f32 and q8_0): only
the LongRoPE keys and tensors differ, quantized blocks are copied byte for byte, and llama.cpp's
long-regime logits match the file convert --to gguf writes."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from click.testing import CliRunner
from gguf_support import ORIGINAL, require_llama_cpp, run_llama_cpp_converter

from converters.gguf_longrope import factor_tensor_names, owned_keys
from longrope_export.cli import main

COUNTS = {"GGUF.kv_count", "GGUF.tensor_count"}


def _snapshot(path: Path) -> tuple[dict[str, tuple], dict[str, tuple]]:
    reader = gguf.GGUFReader(path)
    fields = {f.name: (tuple(f.types), b"".join(bytes(f.parts[i]) for i in f.data)) for f in reader.fields.values()}
    tensors = {t.name: (t.tensor_type, tuple(int(x) for x in t.shape), t.data.tobytes()) for t in reader.tensors}
    return fields, tensors


@pytest.fixture(scope="module")
def plain_ggufs(gguf_models, llama_cpp_converter_script, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("plain")
    return {outtype: run_llama_cpp_converter(llama_cpp_converter_script, gguf_models.phi3_base,
                                             folder / f"plain-{outtype}.gguf", outtype) for outtype in ("f32", "q8_0")}


@pytest.mark.parametrize("outtype", ["f32", "q8_0"])
def test_patch_changes_only_longrope(outtype: str, plain_ggufs, gguf_models, converted_gguf, tmp_path) -> None:
    from converters.gguf_inspect import inspect_gguf

    source = plain_ggufs[outtype]
    assert inspect_gguf(source)["longrope"] is None and not inspect_gguf(source)["silent_drop"]
    out = tmp_path / "patched.gguf"
    result = CliRunner().invoke(main, ["gguf-patch", str(source), "--factors", str(gguf_models.phi3_spec),
                                       "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["spec"]["policy"] == "switch"
    before_fields, before_tensors = _snapshot(source)
    after_fields, after_tensors = _snapshot(out)
    owned = owned_keys("phi3") | COUNTS
    changed = {k for k in before_fields.keys() | after_fields.keys()
               if before_fields.get(k) != after_fields.get(k)}
    assert changed <= owned, changed - owned
    assert set(after_tensors) - set(before_tensors) == set(factor_tensor_names())
    for name, value in before_tensors.items():
        assert after_tensors[name] == value, name  # quantized blocks byte for byte
    if outtype == "q8_0":
        assert any(t[0] == gguf.GGMLQuantizationType.Q8_0 for t in after_tensors.values())
    converted = {t.name: t.data for t in gguf.GGUFReader(converted_gguf("phi3")).tensors}
    for name in factor_tensor_names():
        np.testing.assert_array_equal(np.frombuffer(after_tensors[name][2], np.float32), converted[name])

    require_llama_cpp()
    from validation.gguf_parity import compare_logits, token_ids
    from validation.llama_cpp_runtime import context_for, llama_cpp_logits

    ids = token_ids(300, 256)
    choice = context_for(300, ORIGINAL, "long")
    reference_file = converted_gguf("phi3", outtype)
    got = compare_logits(llama_cpp_logits(reference_file, ids, choice), llama_cpp_logits(out, ids, choice))
    print(f"patched {outtype} vs converted {outtype}, 300 tokens: {got}")
    assert got["max_abs_error"] <= 1e-3 * got["logit_scale"] and got["top1_agreement"] == 1.0
    plain = compare_logits(llama_cpp_logits(reference_file, ids, choice), llama_cpp_logits(source, ids, choice))
    assert plain["max_abs_error"] > 100 * max(got["max_abs_error"], 1e-6)


def test_patch_replaces_existing_longrope(converted_gguf, tmp_path) -> None:
    from gguf_support import LA2_LONG

    out = tmp_path / "replaced.gguf"
    result = CliRunner().invoke(main, ["gguf-patch", str(converted_gguf("llama")), "--factors", str(LA2_LONG),
                                       "--max-position-embeddings", "4096", "--start-token", "2", "-o", str(out)])
    assert result.exit_code == 0, result.output
    reader = gguf.GGUFReader(out)
    names = [f.name for f in reader.fields.values()]
    assert len(names) == len(set(names))
    fields = dict(reader.fields)
    assert fields[gguf.Keys.LLM.CONTEXT_LENGTH.format(arch="llama")].contents() == 4096
    assert fields[gguf.Keys.Rope.SCALING_TYPE.format(arch="llama")].contents() == "longrope"
    tensors = {t.name: t.data for t in reader.tensors}
    long_name, short_name = factor_tensor_names()
    np.testing.assert_array_equal(tensors[long_name], tensors[short_name])  # long-only: short := long
    assert sum(name in tensors for name in factor_tensor_names()) == 2


def test_patch_refuses_per_layer_factors(converted_gguf, tmp_path) -> None:
    rows = tmp_path / "per-layer.csv"
    rows.write_text("\n".join(",".join(str(1.0 + layer + i / 64) for i in range(64)) for layer in range(2)))
    out = tmp_path / "out.gguf"
    result = CliRunner().invoke(main, ["gguf-patch", str(converted_gguf("llama")), "--factors", str(rows),
                                       "--max-position-embeddings", "8192", "-o", str(out)])
    assert result.exit_code == 2 and "differ between layers" in result.stderr
    assert list(tmp_path.iterdir()) == [rows]


def test_patch_repairs_stock_llama_silent_drop(gguf_models, converted_gguf, llama_cpp_converter_script,
                                               tmp_path) -> None:
    """llama.cpp's converter on a LongRoPE Llama writes the type but no factors (plain RoPE at run time);
    gguf-patch with the checkpoint's own spec gives llama.cpp the logits of convert --to gguf."""
    from converters.gguf_inspect import inspect_gguf

    stock = run_llama_cpp_converter(llama_cpp_converter_script, gguf_models.llama_baked, tmp_path / "stock.gguf")
    assert inspect_gguf(stock)["silent_drop"] is True
    out = tmp_path / "repaired.gguf"
    result = CliRunner().invoke(main, ["gguf-patch", str(stock), "--factors", str(gguf_models.llama_baked),
                                       "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert inspect_gguf(out)["silent_drop"] is False
    require_llama_cpp()
    from validation.gguf_parity import compare_logits, token_ids
    from validation.llama_cpp_runtime import context_for, llama_cpp_logits

    for n_tokens, which in ((64, "short"), (300, "long")):
        ids, choice = token_ids(n_tokens, 256), context_for(n_tokens, ORIGINAL, which)
        reference = llama_cpp_logits(converted_gguf("llama"), ids, choice)
        got = compare_logits(reference, llama_cpp_logits(out, ids, choice))
        assert got["max_abs_error"] <= 1e-3 * got["logit_scale"], (n_tokens, got)
        dropped = compare_logits(reference, llama_cpp_logits(stock, ids, choice))
        assert dropped["max_abs_error"] > 100 * max(got["max_abs_error"], 1e-6), (n_tokens, dropped)


@pytest.mark.parametrize("source_kind", ["plain", "converted"])
def test_patch_split_model(source_kind: str, plain_ggufs, gguf_models, converted_gguf, tmp_path) -> None:
    """A split model is patched through its first file: later files without LongRoPE tensors are copied byte
    for byte, one holding old factor tensors is rewritten without them; llama.cpp loads the result."""
    from gguf_support import split_gguf

    source = plain_ggufs["f32"] if source_kind == "plain" else converted_gguf("phi3")
    (tmp_path / "in").mkdir()
    first = split_gguf(source, tmp_path / "in", max_tensors=7)
    inputs = sorted((tmp_path / "in").iterdir())
    assert len(inputs) == 3
    out = tmp_path / "out" / "patched-00001-of-00003.gguf"
    result = CliRunner().invoke(main, ["gguf-patch", str(first), "--factors", str(gguf_models.phi3_spec),
                                       "-o", str(out)])
    assert result.exit_code == 0, result.output
    outputs = sorted(out.parent.iterdir())
    assert [p.name for p in outputs] == [f"patched-{i:05d}-of-00003.gguf" for i in (1, 2, 3)]
    assert outputs[1].read_bytes() == inputs[1].read_bytes()
    assert (outputs[2].read_bytes() == inputs[2].read_bytes()) == (source_kind == "plain")
    count = gguf.GGUFReader(outputs[0]).fields[gguf.Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT].contents()
    assert count == len(gguf.GGUFReader(converted_gguf("phi3")).tensors)
    require_llama_cpp()
    from validation.gguf_parity import compare_logits, token_ids
    from validation.llama_cpp_runtime import context_for, llama_cpp_logits

    ids, choice = token_ids(300, 256), context_for(300, ORIGINAL, "long")
    got = compare_logits(llama_cpp_logits(converted_gguf("phi3"), ids, choice), llama_cpp_logits(out, ids, choice))
    assert got["max_abs_error"] <= 1e-3 * got["logit_scale"], got
