"""Fixtures: tiny random checkpoints built in-process (nothing downloads), real factor files."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import build_checkpoint

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATA = Path(os.environ.get("LONGROPE_SHARED_DATA", SHARED / "data"))
FACTORS = DATA / "longrope-factors"
PHI35_CONFIG = DATA / "configs" / "phi-3.5-mini-instruct.config.json"


def tree_digest(folder: Path) -> dict[str, str]:
    """sha256 and mode of every file under ``folder``: to show an input was not modified."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            out[str(path.relative_to(folder))] = f"{digest} {oct(path.stat().st_mode)}"
    return out


@pytest.fixture(scope="session")
def factors_dir() -> Path:
    if not FACTORS.is_dir():
        pytest.fail(f"shared factor files not found at {FACTORS} (set LONGROPE_SHARED_DATA)")
    return FACTORS


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny LlamaForCausalLM, head_dim 128 (the published LLaMA2 factors fit), original 4096."""
    return build_checkpoint("llama", tmp_path_factory.mktemp("llama") / "base")


@pytest.fixture(scope="session")
def phi3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny Phi3ForCausalLM, head_dim 96 (the Phi-3.5 factors fit), original 4096."""
    return build_checkpoint("phi3", tmp_path_factory.mktemp("phi3") / "base")


@pytest.fixture(scope="session")
def mistral_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny MistralForCausalLM with the real config's quirks: max 32768, sliding window 4096."""
    return build_checkpoint("mistral", tmp_path_factory.mktemp("mistral") / "base")
