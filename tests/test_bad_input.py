"""Bad input: exit 2, one line on stderr naming the problem, and no output folder left behind."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tree_digest

CLI = [sys.executable, "-m", "longrope_export.cli"]


def run_cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True)


def assert_clean_failure(result: subprocess.CompletedProcess, out: Path, *needles: str, code: int = 2) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")], "temporary folder left"


def _csv(tmp_path: Path, text: str, name: str = "f.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, needles", [
    ("\n".join(["1.5"] * 63), ["has 63 values", "rotary dim 128 needs 64"]),
    ("\n".join(["1.5"] * 63 + ["nan"]), ["[63] is nan"]),
    ("\n".join(["1.5"] * 63 + ["-1"]), ["[63] is -1.0"]),
])
def test_bad_factor_values(llama_dir: Path, tmp_path: Path, text: str, needles: list[str]) -> None:
    factors = _csv(tmp_path, text)
    out = tmp_path / "out"
    result = run_cli("bake", llama_dir, "--factors", factors, "--max-position-embeddings", 32768, "-o", out)
    assert_clean_failure(result, out, str(factors), *needles)


@pytest.mark.parametrize("extra, needle", [
    (["--start-token", "4096"], "n_hat=4096"),
    (["--start-token", "-1"], "n_hat=-1"),
    (["--original-max-position-embeddings", "65536"], "original context 65536 >= target context 32768"),
    (["--policy", "switch"], "policy switch needs short factors"),
])
def test_bad_spec_options(llama_dir: Path, factors_dir: Path, tmp_path: Path, extra: list[str], needle: str) -> None:
    out = tmp_path / "out"
    result = run_cli("bake", llama_dir, "--factors", factors_dir / "ft_la2_128k.csv",
                     "--max-position-embeddings", 32768, "-o", out, *extra)
    assert_clean_failure(result, out, needle)


def test_missing_config_key(llama_dir: Path, factors_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(llama_dir, broken)
    config = json.loads((broken / "config.json").read_text())
    del config["max_position_embeddings"]
    (broken / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    result = run_cli("bake", broken, "--factors", factors_dir / "ft_la2_128k.csv",
                     "--max-position-embeddings", 32768, "-o", out)
    assert_clean_failure(result, out, "config.json", "missing config key max_position_embeddings")


def test_missing_target_context(llama_dir: Path, factors_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("bake", llama_dir, "--factors", factors_dir / "ft_la2_128k.csv", "-o", out)
    assert_clean_failure(result, out, "--max-position-embeddings")


def test_existing_output_needs_force(llama_dir: Path, factors_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    args = ["bake", llama_dir, "--factors", factors_dir / "ft_la2_128k.csv", "--max-position-embeddings", 131072,
            "-o", out]
    result = run_cli(*args)
    assert result.returncode == 2 and "already exists" in result.stderr and "--force" in result.stderr
    assert (out / "keep.txt").read_text() == "user data"
    result = run_cli(*args, "--force", "--link")
    assert result.returncode == 0, result.stderr
    assert not (out / "keep.txt").exists() and (out / "longrope.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_truncated_safetensors(llama_dir: Path, factors_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(llama_dir, broken)
    shard = broken / "model.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 1000])
    before = tree_digest(broken)
    out = tmp_path / "out"
    result = run_cli("bake", broken, "--factors", factors_dir / "ft_la2_128k.csv",
                     "--max-position-embeddings", 131072, "-o", out)
    assert_clean_failure(result, out, "model.safetensors", "truncated or corrupt")
    assert tree_digest(broken) == before


def test_output_inside_input_is_refused(llama_dir: Path, factors_dir: Path) -> None:
    out = llama_dir / "nested"
    result = run_cli("bake", llama_dir, "--factors", factors_dir / "ft_la2_128k.csv",
                     "--max-position-embeddings", 131072, "-o", out)
    assert_clean_failure(result, out, "overlaps the input")


def test_unsupported_architecture(tmp_path: Path, factors_dir: Path) -> None:
    model = tmp_path / "gpt2"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 64}))
    out = tmp_path / "out"
    result = run_cli("bake", model, "--factors", factors_dir / "ft_la2_128k.csv", "-o", out)
    assert_clean_failure(result, out, "model_type 'gpt2' is not supported", "llama")


def test_inspect_missing_file_and_usage(tmp_path: Path) -> None:
    result = run_cli("inspect", tmp_path / "nope.csv")
    assert result.returncode == 2 and "nope.csv: file not found" in result.stderr
    result = run_cli("bake")
    assert result.returncode == 2
