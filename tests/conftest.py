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


@pytest.fixture(scope="session")
def gguf_models(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Tiny phi3 and llama checkpoints (SentencePiece tokenizers), original 256, baked to 8192 with real factors."""
    from gguf_support import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("gguf"))


@pytest.fixture(scope="session")
def converted_gguf(gguf_models, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """``converted_gguf(kind, outtype)``: the tiny baked model converted once per session."""
    from converters.gguf_writer import convert_to_gguf

    folder, cache = tmp_path_factory.mktemp("converted"), {}

    def make(kind: str, outtype: str = "f32") -> Path:
        if (kind, outtype) not in cache:
            cache[kind, outtype] = folder / f"{kind}-{outtype}.gguf"
            convert_to_gguf(gguf_models.baked(kind), cache[kind, outtype], outtype)
        return cache[kind, outtype]

    return make


@pytest.fixture(scope="session")
def llama_cpp_converter_script() -> Path:
    """llama.cpp's own convert_hf_to_gguf.py, unpacked from the pinned llama-cpp-python sdist."""
    from gguf_support import llama_cpp_converter

    cache = Path(os.environ.get("LONGROPE_SDIST_CACHE", Path.home() / ".cache" / "longrope-export" / "sdist"))
    return llama_cpp_converter(cache)
