"""Bad inputs get an exit code and a message, never a crash, and leave no output behind: truncated or
corrupt GGUF and safetensors files, an f16 factor tensor (llama.cpp would SIGABRT), the silent-drop
case, and Phi-3's vocabulary rule."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from gguf_support import require_llama_cpp, rewrite_gguf

from converters.gguf_longrope import factor_tensor_names
from longrope_export.cli import main


@pytest.fixture()
def bad_files(converted_gguf, tmp_path) -> dict[str, Path]:
    good = converted_gguf("llama")
    data = good.read_bytes()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(data[: len(data) // 2])
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"NOPE" + data[4:])
    header_cut = tmp_path / "header-cut.gguf"
    header_cut.write_bytes(data[:200])
    f16 = rewrite_gguf(good, tmp_path / "f16-factors.gguf", as_f16=frozenset(factor_tensor_names()))
    return {"truncated": truncated, "corrupt": corrupt, "header-cut": header_cut, "f16-factors": f16}


@pytest.mark.parametrize("name", ["truncated", "corrupt", "header-cut", "f16-factors"])
def test_bad_gguf_exit_2_no_output(name: str, bad_files, gguf_models, tmp_path) -> None:
    path = bad_files[name]
    out = tmp_path / "out" / "patched.gguf"
    inspect = CliRunner().invoke(main, ["inspect", str(path), "--json"])
    if name == "f16-factors":
        assert inspect.exit_code == 0 and "F32" in " ".join(json.loads(inspect.stdout)["load_problems"])
    else:
        assert inspect.exit_code == 2 and str(path) in inspect.stderr and "truncated or corrupt" in inspect.stderr
    patch = CliRunner().invoke(main, ["gguf-patch", str(path), "--factors", str(gguf_models.phi3_spec),
                                      "-o", str(out)])
    assert patch.exit_code == 2, patch.output
    assert not out.parent.exists() or not list(out.parent.iterdir())
    validate = CliRunner().invoke(main, ["validate", "gguf", str(path), "--checkpoint", str(gguf_models.llama_baked)])
    assert validate.exit_code == 2, validate.output
    assert "error:" in validate.stderr


def test_f16_factor_tensor_never_reaches_llama_cpp(bad_files) -> None:
    from longrope_export.errors import InputError
    from validation.llama_cpp_runtime import context_for, llama_cpp_logits

    with pytest.raises(InputError, match="aborts the process unless it is F32"):
        llama_cpp_logits(bad_files["f16-factors"], [1, 2, 3], context_for(3, 256, "short"))


def test_isolated_llama_cpp_turns_an_abort_into_exit_3(bad_files) -> None:
    """Without the preflight check llama.cpp aborts the process on an f16 factor tensor (SIGABRT); run in a
    child process the abort becomes a RuntimeUnavailable error (exit 3)."""
    require_llama_cpp()
    from longrope_export.errors import RuntimeUnavailable
    from validation.llama_cpp_runtime import _logits_in_child, context_for

    with pytest.raises(RuntimeUnavailable, match="crashed") as caught:
        _logits_in_child(bad_files["f16-factors"], [1, 2, 3], context_for(3, 256, "short"), 2)
    assert caught.value.exit_code == 3


def test_silent_drop_is_reported(converted_gguf, tmp_path) -> None:
    dropped = rewrite_gguf(converted_gguf("llama"), tmp_path / "dropped.gguf", drop=frozenset(factor_tensor_names()))
    result = CliRunner().invoke(main, ["inspect", str(dropped), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["silent_drop"] is True and report["rope_scaling_type"] == "longrope"
    human = CliRunner().invoke(main, ["inspect", str(dropped)])
    assert "silent drop" in human.stdout and "plain RoPE" in human.stderr


def test_corrupt_safetensors_exit_2_no_output(gguf_models, tmp_path) -> None:
    model = tmp_path / "model"
    shutil.copytree(gguf_models.phi3_baked, model)
    shard = next(model.glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:-1000])
    out = tmp_path / "out.gguf"
    result = CliRunner().invoke(main, ["convert", str(model), "--to", "gguf", "-o", str(out)])
    assert result.exit_code == 2 and "safetensors" in result.stderr and str(shard) in result.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_phi3_name_without_required_tokens_is_refused(gguf_models, tmp_path) -> None:
    model = tmp_path / "phi3_tiny"
    shutil.copytree(gguf_models.phi3_baked, model)
    from tiny_models import write_sentencepiece

    write_sentencepiece(model, 256, extra_symbols=())  # no <|endoftext|>
    out = tmp_path / "out.gguf"
    result = CliRunner().invoke(main, ["convert", str(model), "--to", "gguf", "-o", str(out)])
    assert result.exit_code == 2 and "<|endoftext|>" in result.stderr and not out.exists()


def test_split_gguf_names_are_checked(converted_gguf, gguf_models, tmp_path) -> None:
    from gguf_support import split_gguf

    first = split_gguf(converted_gguf("phi3"), tmp_path, max_tensors=8)
    second = first.with_name(first.name.replace("-00001-", "-00002-"))
    cases = [(second, tmp_path / "out-00001-of-00003.gguf", "give the first file"),
             (first, tmp_path / "out.gguf", "MODEL-00001-of-00003.gguf")]
    for source, out, phrase in cases:
        result = CliRunner().invoke(main, ["gguf-patch", str(source), "--factors", str(gguf_models.phi3_spec),
                                           "-o", str(out)])
        assert result.exit_code == 2 and phrase in result.stderr, result.output
    third = first.with_name(first.name.replace("-00001-", "-00003-"))
    third.unlink()
    result = CliRunner().invoke(main, ["gguf-patch", str(first), "--factors", str(gguf_models.phi3_spec),
                                       "-o", str(tmp_path / "o" / "out-00001-of-00003.gguf")])
    assert result.exit_code == 2 and "missing" in result.stderr and not (tmp_path / "o").exists()
