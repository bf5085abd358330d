"""Write a LongRoPE spec into a Hugging Face ``config.json`` that transformers 4.57.x and 5.x both load.

Dialects (verified on 4.57.6 and 5.24.0):

- ``phi3``: ``rope_scaling = {"type": "longrope", "short_factor", "long_factor"}`` plus top-level
  ``original_max_position_embeddings``, ``max_position_embeddings`` and ``rope_theta``. 4.57's
  Phi3Config rejects any other key in that dict, so an explicit attention factor is not portable.
- ``llama`` (llama, mistral, qwen2): ``rope_scaling = {"rope_type": "longrope", "short_factor",
  "long_factor", "original_max_position_embeddings": N0, "factor": N/N0}`` plus top-level
  ``max_position_embeddings = N`` (4.57 derives the scale from it) and
  ``original_max_position_embeddings = N0``.
- ``transformers5``: ``rope_parameters`` only (4.57 ignores it and runs plain RoPE): written
  only on request, for what the portable forms cannot hold.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from longrope_export import rope
from longrope_export.errors import NotPortableError
from longrope_export.registry import Architecture
from longrope_export.sources import CONFIG_KEY
from longrope_export.spec import SPEC_VERSION, LongRoPESpec

SlidingWindow = Literal["drop", "keep"]


def _explicit_attention(spec: LongRoPESpec) -> float | None:
    """The attention factor when it differs from what transformers would compute by default."""
    if spec.attention_factor is None:
        return None
    default = rope.attention_factor(spec.replace(attention_factor=None))
    return None if spec.attention_factor == default else spec.attention_factor


def baked_config(base: dict[str, Any], spec: LongRoPESpec, arch: Architecture, *,
                 transformers5_only: bool = False, sliding_window: SlidingWindow = "drop",
                 source: str = "config.json") -> tuple[dict[str, Any], list[str]]:
    """The new config dict and notes for the user. Never modifies ``base``."""
    config = copy.deepcopy(base)
    notes: list[str] = []
    old_params = config.pop("rope_parameters", None) or {}
    config.pop("rope_scaling", None)
    if "partial_rotary_factor" in old_params and "partial_rotary_factor" not in config:
        config["partial_rotary_factor"] = old_params["partial_rotary_factor"]
    long_factor = list(spec.factors("long"))
    short_factor = list(spec.factors("short"))
    original, target = spec.original_max_position_embeddings, spec.max_position_embeddings
    explicit = _explicit_attention(spec)
    config["max_position_embeddings"] = target
    config["original_max_position_embeddings"] = original

    if transformers5_only:
        params: dict[str, Any] = {"rope_type": "longrope", "rope_theta": spec.rope_theta,
                                  "short_factor": short_factor, "long_factor": long_factor,
                                  "original_max_position_embeddings": original, "factor": target / original}
        if "partial_rotary_factor" in config:
            params["partial_rotary_factor"] = config["partial_rotary_factor"]
        if explicit is not None:
            params["attention_factor"] = explicit
        config["rope_parameters"] = params
        config.pop("rope_theta", None)
        notes.append("wrote the transformers 5.x dialect (rope_parameters): transformers 4.57 ignores it "
                     "and runs plain RoPE")
    elif arch.dialect == "phi3":
        if explicit is not None:
            raise NotPortableError(
                f"an explicit attention factor ({explicit}) cannot be written portably for phi3: "
                "transformers 4.57's Phi3Config rejects extra keys in rope_scaling", path=source,
                fix="omit --attention-factor, or pass --transformers5-only to write rope_parameters")
        config["rope_scaling"] = {"type": "longrope", "short_factor": short_factor, "long_factor": long_factor}
        config["rope_theta"] = spec.rope_theta
    else:
        scaling: dict[str, Any] = {"rope_type": "longrope", "short_factor": short_factor,
                                   "long_factor": long_factor, "original_max_position_embeddings": original,
                                   "factor": target / original}
        if explicit is not None:
            scaling["attention_factor"] = explicit
        config["rope_scaling"] = scaling
        config["rope_theta"] = spec.rope_theta

    if arch.has_sliding_window and config.get("sliding_window") is not None:
        if sliding_window == "drop":
            notes.append(f"sliding_window {config['sliding_window']} removed (set to null): the extended model "
                         "attends over the whole context, as llama.cpp and the ONNX export do; pass "
                         "--sliding-window keep to keep it")
            config["sliding_window"] = None
        else:
            notes.append(f"sliding_window {config['sliding_window']} kept: transformers masks beyond it, "
                         "llama.cpp (arch llama) does not, so the two diverge past it")
    config[CONFIG_KEY] = {"spec_version": SPEC_VERSION, "start_token": spec.start_token,
                          "switch_policy": spec.policy}
    return config, notes
