"""rope.py against transformers' own functions and an independent implementation, bitwise in fp32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import PHI35_CONFIG
from reference_rope import reference_cos_sin
from transformers import AutoConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from longrope_export import rope
from longrope_export.sources import read_factor_csv, read_json, spec_from_config
from longrope_export.spec import build_spec


@pytest.fixture(scope="module")
def phi35_spec():
    spec = spec_from_config(read_json(PHI35_CONFIG), str(PHI35_CONFIG))
    assert spec is not None
    return spec


def test_inv_freq_bitwise_equal_to_transformers(phi35_spec) -> None:
    config = AutoConfig.for_model("phi3", **{k: v for k, v in read_json(PHI35_CONFIG).items()
                                              if k not in ("model_type", "auto_map", "architectures")})
    compute = ROPE_INIT_FUNCTIONS["longrope"]
    short, short_scale = compute(config, None)
    long, long_scale = compute(config, None, seq_len=4097)
    assert torch.equal(rope.inv_freq(phi35_spec, "short"), short)
    assert torch.equal(rope.inv_freq(phi35_spec, "long"), long)
    assert rope.attention_factor(phi35_spec) == short_scale == long_scale


def test_attention_factor_precedence(phi35_spec) -> None:
    assert rope.attention_factor(phi35_spec) == pytest.approx(1.1902380714238083, abs=0)
    assert rope.attention_factor(phi35_spec.replace(attention_factor=1.5)) == 1.5


def test_switch_rule(phi35_spec) -> None:
    assert rope.factor_set_for(phi35_spec, 4096) == "short"
    assert rope.factor_set_for(phi35_spec, 4097) == "long"
    long_only = phi35_spec.replace(policy="long-only", short_factors=phi35_spec.long_factors)
    assert rope.factor_set_for(long_only, 10) == "long"


def test_cos_sin_matches_independent_implementation_to_2m(factors_dir: Path) -> None:
    factors = read_factor_csv(factors_dir / "2048k_la2_256k.csv")
    spec = build_spec(rotary_dim=128, rope_theta=10000.0, original=4096, target=2097152, long_factors=factors)
    positions = [0, 1, 4095, 4096, 4097, 1_000_003, 2_097_151]
    cos, sin = rope.cos_sin(spec, torch.tensor([positions]))
    ref_cos, ref_sin = reference_cos_sin(positions, list(factors[0]), 128, 10000.0, 4096, 2097152)
    assert torch.equal(cos[0], ref_cos) and torch.equal(sin[0], ref_sin)
    # the check is sharp: one factor 1% off changes the angles
    bent = list(factors[0])
    bent[40] *= 1.01
    bad_cos, _ = reference_cos_sin(positions, bent, 128, 10000.0, 4096, 2097152)
    assert not torch.equal(cos[0], bad_cos)


def test_start_token_rows_are_plain_rope(phi35_spec) -> None:
    spec = phi35_spec.replace(start_token=4)
    ids = torch.tensor([[0, 1, 3, 4, 5, 5000]])
    cos, sin = rope.cos_sin(spec, ids)
    positions = ids[0].tolist()
    plain_cos, _ = reference_cos_sin(positions, [1.0] * 48, 96, 10000.0, 4096, 4096)  # no factors, no mscale
    long_cos, _ = reference_cos_sin(positions, list(spec.factors("long")), 96, 10000.0, 4096, 131072)
    assert torch.equal(cos[0, :3], plain_cos[:3])
    assert torch.equal(cos[0, 3:], long_cos[3:])
    ref_long, ref_sin = reference_cos_sin(positions, list(spec.factors("long")), 96, 10000.0, 4096, 131072, n_hat=4)
    assert torch.equal(cos[0], ref_long) and torch.equal(sin[0], ref_sin)


def test_chunked_table_equals_direct_and_stays_bounded(phi35_spec) -> None:
    start, stop, chunk = 4000, 4300, 64
    chunks = list(rope.cos_sin_table(phi35_spec, "long", start, stop, chunk=chunk))
    assert all(c.shape[0] <= chunk for _, c, _ in chunks)
    cos = torch.cat([c for _, c, _ in chunks])
    direct, _ = rope.cos_sin(phi35_spec, torch.arange(start, stop), factor_set="long")
    assert torch.equal(cos, direct)


def test_full_2m_table_is_produced_in_bounded_chunks(factors_dir: Path) -> None:
    factors = read_factor_csv(factors_dir / "2048k_la2_256k.csv")
    spec = build_spec(rotary_dim=128, rope_theta=10000.0, original=4096, target=2097152, long_factors=factors)
    rows, largest = 0, 0
    for first, cos, sin in rope.cos_sin_table(spec, "long", chunk=262144):
        assert first == rows
        rows += cos.shape[0]
        largest = max(largest, cos.numel() * cos.element_size() + sin.numel() * sin.element_size())
    assert rows == 2097152
    assert largest == 262144 * 128 * 4 * 2  # 256 MiB per chunk, never the 1 GiB whole table
    last_cos, _ = reference_cos_sin([2097151], list(factors[0]), 128, 10000.0, 4096, 2097152)
    assert torch.equal(cos[-1], last_cos[0])
