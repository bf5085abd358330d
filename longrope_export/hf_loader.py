"""Run a baked checkpoint in transformers with the full spec, start-token threshold included.

Stock transformers has no field for ``n_hat``; :func:`load_model` loads the checkpoint normally and
swaps the model's rotary embedding for :class:`LongRoPERotaryEmbedding`, which calls ``rope.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import rope
from .errors import InputError
from .sources import read_json, spec_from_config
from .spec import LongRoPESpec


class LongRoPERotaryEmbedding(nn.Module):
    """Drop-in for a transformers rotary embedding: ``forward(x, position_ids) -> (cos, sin)``."""

    def __init__(self, spec: LongRoPESpec, layer: int = 0) -> None:
        super().__init__()
        self.spec = spec
        self.layer = layer

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = rope.cos_sin(self.spec, position_ids, self.layer)
        return cos.to(dtype=x.dtype, device=x.device), sin.to(dtype=x.dtype, device=x.device)


def checkpoint_spec(path: Path) -> LongRoPESpec:
    """The spec of a baked checkpoint: ``longrope.json`` if present, else what config.json says."""
    path = Path(path)
    record = path / "longrope.json"
    if record.exists():
        return LongRoPESpec.from_dict(read_json(record), source=str(record))
    spec = spec_from_config(read_json(path / "config.json"), str(path / "config.json"))
    if spec is None:
        raise InputError("checkpoint has no LongRoPE", path=path, fix="bake it first: longrope-export bake")
    return spec


def patch_rotary(model: nn.Module, spec: LongRoPESpec) -> nn.Module:
    """Replace the model-level rotary embedding with the spec's. Returns ``model``."""
    inner = getattr(model, "model", model)
    if not hasattr(inner, "rotary_emb"):
        raise InputError(f"{type(model).__name__} has no model-level rotary_emb to replace",
                         fix="use a llama, mistral, qwen2 or phi3 model")
    inner.rotary_emb = LongRoPERotaryEmbedding(spec)
    return model


def load_model(path: str | Path, **kwargs: Any) -> nn.Module:
    """``AutoModelForCausalLM.from_pretrained(path)`` with the start-token threshold honoured."""
    from transformers import AutoModelForCausalLM

    spec = checkpoint_spec(Path(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    return patch_rotary(model, spec)
