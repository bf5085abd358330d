"""Baked checkpoints load in transformers 4.57.6 (its own environment) and compute what 5.x computes.

The 4.57 interpreter comes from ``LONGROPE_COMPAT_PYTHON`` (the test script sets it up); without
it the test skips, unless ``LONGROPE_REQUIRE_COMPAT=1`` (as in CI), where that is a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import PHI35_CONFIG

from longrope_export.bake import BakeOptions, bake

HERE = Path(__file__).parent
LENGTHS = ("64", "4100")  # below and above the original context 4096


def compat_python() -> str:
    python = os.environ.get("LONGROPE_COMPAT_PYTHON")
    if not python or not Path(python).exists():
        if os.environ.get("LONGROPE_REQUIRE_COMPAT") == "1":
            pytest.fail(f"LONGROPE_COMPAT_PYTHON={python!r} is not an interpreter with transformers 4.57.6")
        pytest.skip("set LONGROPE_COMPAT_PYTHON to a Python with transformers==4.57.6")
    return python


def logits_under(python: str, model: Path, out: Path) -> dict:
    result = subprocess.run([python, str(HERE / "compat_logits.py"), str(model), str(out), *LENGTHS],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out)


@pytest.fixture(scope="module")
def baked(llama_dir: Path, phi3_dir: Path, factors_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("compat")
    models = {
        "llama": bake(llama_dir, root / "llama", BakeOptions(factors=factors_dir / "ft_la2_128k.csv",
                                                               max_position_embeddings=131072)).output,
        "phi3": bake(phi3_dir, root / "phi3", BakeOptions(factors=PHI35_CONFIG)).output,
        "llama-v5-only": bake(llama_dir, root / "llama5", BakeOptions(
            factors=factors_dir / "ft_la2_128k.csv", max_position_embeddings=131072, transformers5_only=True)).output,
    }
    return models


@pytest.mark.parametrize("name", ["llama", "phi3"])
def test_457_and_5x_compute_the_same(name: str, baked: dict, tmp_path: Path) -> None:
    python = compat_python()
    old = logits_under(python, baked[name], tmp_path / "old.pt")
    new = logits_under(sys.executable, baked[name], tmp_path / "new.pt")
    assert old["transformers"].startswith("4.57") and new["transformers"].startswith("5.")
    for length in map(int, LENGTHS):
        scale = float(new["logits"][length].abs().max())
        err = float((old["logits"][length] - new["logits"][length]).abs().max())
        assert err <= 1e-5 * scale, (name, length, err, scale)
        assert torch.equal(old["cos"][length], new["cos"][length]), (name, length)


def test_non_portable_dialect_is_caught(baked: dict, tmp_path: Path) -> None:
    """The 5.x-only dialect runs plain RoPE under 4.57: the comparison above would fail on it."""
    python = compat_python()
    old = logits_under(python, baked["llama-v5-only"], tmp_path / "old.pt")
    new = logits_under(sys.executable, baked["llama-v5-only"], tmp_path / "new.pt")
    for length in map(int, LENGTHS):
        scale = float(new["logits"][length].abs().max())
        err = float((old["logits"][length] - new["logits"][length]).abs().max())
        assert err > 1e-2 * scale, (length, err, scale)
