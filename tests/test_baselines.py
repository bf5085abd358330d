"""Baselines as specs: YaRN factors reproduce transformers' YaRN frequencies."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from longrope_export import rope
from longrope_export.baselines import METHODS, baseline_spec


def test_yarn_matches_transformers() -> None:
    config = LlamaConfig(hidden_size=256, num_attention_heads=4, head_dim=64, max_position_embeddings=2048,
                         rope_parameters={"rope_type": "yarn", "factor": 8.0, "rope_theta": 10000.0,
                                          "original_max_position_embeddings": 256})
    want, want_scale = ROPE_INIT_FUNCTIONS["yarn"](config, None)
    spec = baseline_spec("yarn", rotary_dim=64, rope_theta=10000.0, original=256, target=2048)
    torch.testing.assert_close(rope.inv_freq(spec, "long"), want, rtol=1e-6, atol=0)
    assert rope.attention_factor(spec) == pytest.approx(want_scale)


@pytest.mark.parametrize("method", METHODS)
def test_every_baseline_is_a_valid_spec(method: str) -> None:
    spec = baseline_spec(method, rotary_dim=64, rope_theta=10000.0, original=256, target=2048)
    factors = spec.factors("long")
    assert len(factors) == 32 and all(f >= 1.0 for f in factors)
    if method == "pi":
        assert set(factors) == {8.0}
    if method == "ntk":
        assert factors[0] == 1.0 and math.isclose(factors[-1], 8.0)
    if method == "none":
        assert rope.attention_factor(spec) == 1.0 and set(factors) == {1.0}
