"""Supported architectures, declared as data. Duplicate registrations raise."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal

from .errors import InputError


@dataclass(frozen=True)
class Architecture:
    """How one HF ``model_type`` carries LongRoPE."""

    model_type: str
    #: ``phi3``: rope_scaling {type, short_factor, long_factor} + top-level contexts (4.57's
    #: Phi3Config rejects any other key); ``llama``: rope_scaling with rope_type, factor and original.
    dialect: Literal["phi3", "llama"]
    #: transformers module and class of the model's rotary embedding.
    rotary_module: str
    rotary_class: str
    #: The original context cannot be taken from the config (Mistral says 32768; LongRoPE's
    #: factors assume 4096): the user must give it.
    original_required: bool = False
    has_sliding_window: bool = False
    #: GGUF architecture name (``gguf.MODEL_ARCH_NAMES``) llama.cpp runs this model as; ``None``: no GGUF export.
    gguf_arch: str | None = None
    #: llama.cpp's ``llama`` arch rotates interleaved pairs: q/k rows are permuted from HF's half-split layout.
    gguf_permute_qk: bool = False

    def rotary_embedding_class(self) -> Any:
        """The stock transformers rotary embedding class (imported on demand)."""
        return getattr(importlib.import_module(self.rotary_module), self.rotary_class)


ARCHITECTURES: dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    """Add ``arch`` to the registry; a second registration of the same model_type raises."""
    if arch.model_type in ARCHITECTURES:
        raise ValueError(f"architecture {arch.model_type!r} registered twice")
    ARCHITECTURES[arch.model_type] = arch
    return arch


register(Architecture("llama", "llama", "transformers.models.llama.modeling_llama", "LlamaRotaryEmbedding",
                      gguf_arch="llama", gguf_permute_qk=True))
register(Architecture("mistral", "llama", "transformers.models.mistral.modeling_mistral", "MistralRotaryEmbedding",
                      original_required=True, has_sliding_window=True, gguf_arch="llama", gguf_permute_qk=True))
register(Architecture("qwen2", "llama", "transformers.models.qwen2.modeling_qwen2", "Qwen2RotaryEmbedding",
                      has_sliding_window=True))
register(Architecture("phi3", "phi3", "transformers.models.phi3.modeling_phi3", "Phi3RotaryEmbedding",
                      gguf_arch="phi3"))


def architecture_for(config: dict[str, Any], source: str = "config.json") -> Architecture:
    """The registered architecture of a config.json, or a clear error listing the supported ones."""
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise InputError(f"model_type {model_type!r} is not supported", path=source,
                         fix=f"supported: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[str(model_type)]
