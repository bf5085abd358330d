"""Tiny baked checkpoints (original context 256, real factor vectors) for the ONNX tests, and their references.

Imported by ``test_onnx_*.py``; the fixtures are session-scoped so every model is built, baked and
exported once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import FACTORS, PHI35_CONFIG
from tiny_models import build_checkpoint

from converters.onnx_export import OnnxOptions, export_onnx
from longrope_export.bake import BakeOptions, bake
from longrope_export.hf_loader import checkpoint_spec
from longrope_export.spec import LongRoPESpec

ORIGINAL = 256
TARGET = 8192
VOCAB = 256


def tolerance(reference: np.ndarray) -> float:
    """The issue's bar: max(1e-4, 3e-5 x logit scale), logit scale = max |logit| of the reference."""
    return max(1e-4, 3e-5 * float(np.abs(reference).max()))


def token_ids(length: int) -> np.ndarray:
    return (np.arange(length, dtype=np.int64) * 7919 + 13) % VOCAB


@dataclass
class Case:
    """One baked checkpoint, its spec and a transformers reference with the same LongRoPE."""

    name: str
    baked: Path
    spec: LongRoPESpec
    exports: dict[str, Path] = field(default_factory=dict)
    _model: Any = None

    def reference_model(self) -> Any:
        """``longrope_export.load_model`` when n_hat > 0 (stock transformers has no field for it), else stock."""
        if self._model is None:
            if self.spec.start_token > 0:
                from longrope_export import load_model

                self._model = load_model(self.baked, dtype=torch.float32)
            else:
                from transformers import AutoModelForCausalLM

                self._model = AutoModelForCausalLM.from_pretrained(str(self.baked), dtype=torch.float32)
            self._model.eval()
        return self._model

    def reference(self, ids: np.ndarray, position_ids: np.ndarray | None = None) -> np.ndarray:
        kwargs = {} if position_ids is None else {"position_ids": torch.from_numpy(position_ids)[None]}
        with torch.no_grad():
            return self.reference_model()(input_ids=torch.from_numpy(ids)[None], **kwargs).logits[0].numpy()

    def export(self, root: Path, rotary: str = "function", spec: LongRoPESpec | None = None, label: str | None = None,
               **options: Any) -> Path:
        """Export once per label; return the model.onnx path."""
        label = label or rotary
        if label not in self.exports:
            out = root / f"{self.name}-{label}"
            export_onnx(self.baked, out, spec or self.spec, OnnxOptions(rotary=rotary, **options))
            self.exports[label] = out / "model.onnx"
        return self.exports[label]


def _bake(kind: str, folder: Path, options: BakeOptions, **overrides: Any) -> Path:
    base = build_checkpoint(kind, folder / "base", max_position_embeddings=ORIGINAL, **overrides)
    bake(base, folder / "baked", options)
    return folder / "baked"


def build_cases(root: Path) -> dict[str, Case]:
    """llama (switch, n_hat 4, LLaMA2 2048k/4k factors), phi3 (switch, Phi-3.5 factors), mistral
    (GQA 4/2 heads, long-only, Mistral 2048k factors), mistral with a kept sliding window of 128,
    phi3-partial (Phi-4-mini style: head_dim 128, partial_rotary_factor 0.75, the 48 Phi-3.5
    factors) and qwen2 (q/k/v biases, long-only LLaMA2 factors)."""
    cases = {}
    llama = _bake("llama", root / "llama", BakeOptions(
        factors=FACTORS / "2048k_la2_256k.csv", short_factors=FACTORS / "4k_la2_256k.csv",
        max_position_embeddings=TARGET, start_token=4))
    phi3 = _bake("phi3", root / "phi3", BakeOptions(
        factors=PHI35_CONFIG, original_max_position_embeddings=ORIGINAL, max_position_embeddings=TARGET),
        original_max_position_embeddings=ORIGINAL)
    mistral = _bake("mistral", root / "mistral", BakeOptions(
        factors=FACTORS / "2048k_mis_256k.csv", original_max_position_embeddings=ORIGINAL,
        max_position_embeddings=TARGET), num_attention_heads=4, num_key_value_heads=2)
    partial = _bake("phi3", root / "phi3-partial", BakeOptions(
        factors=PHI35_CONFIG, original_max_position_embeddings=ORIGINAL, max_position_embeddings=TARGET),
        original_max_position_embeddings=ORIGINAL, hidden_size=256, partial_rotary_factor=0.75)
    qwen2 = _bake("llama", root / "qwen2", BakeOptions(  # the llama geometry, as a Qwen2 model
        factors=FACTORS / "2048k_la2_256k.csv", max_position_embeddings=TARGET), model_type="qwen2")
    window = _bake("mistral", root / "mistral-window", BakeOptions(
        factors=FACTORS / "2048k_mis_256k.csv", original_max_position_embeddings=ORIGINAL,
        max_position_embeddings=TARGET, sliding_window="keep"), sliding_window=128)
    for name, baked in (("llama", llama), ("phi3", phi3), ("mistral", mistral), ("mistral-window", window),
                        ("phi3-partial", partial), ("qwen2", qwen2)):
        cases[name] = Case(name, baked, checkpoint_spec(baked))
    return cases


@pytest.fixture(scope="session")
def onnx_cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    torch.manual_seed(0)
    return build_cases(tmp_path_factory.mktemp("onnx-cases"))


@pytest.fixture(scope="session")
def onnx_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-out")
