"""The one LongRoPE reference: every converter, validator and runtime patch calls this module.

Mirrors transformers ``modeling_rope_utils._compute_longrope_parameters`` (5.24 and 4.57.6) and
the rotary ``forward`` of Llama/Phi-3 models, operation for operation, so that fp32 results are
bitwise equal; adds microsoft/LongRoPE's start-token threshold (positions ``< n_hat`` use the
original frequencies and no magnitude scale).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal

import torch

from .spec import LongRoPESpec

FactorSet = Literal["short", "long"]

#: Rows per chunk of a cos/sin table: 65,536 x 64 pairs x 2 tables x 4 bytes = 32 MiB of fp32
#: output (the angle buffer doubles it), whatever the number of positions.
DEFAULT_CHUNK = 65536


def attention_factor(spec: LongRoPESpec) -> float:
    """The magnitude scale ("mscale") with transformers' precedence: explicit, else
    ``sqrt(1 + ln(s) / ln(original))`` with ``s = max / original`` (1.0 when ``s <= 1``)."""
    if spec.attention_factor is not None:
        return spec.attention_factor
    factor = spec.max_position_embeddings / spec.original_max_position_embeddings
    if factor <= 1.0:
        return 1.0
    return math.sqrt(1 + math.log(factor) / math.log(spec.original_max_position_embeddings))


def uses_long_factors(spec: LongRoPESpec, seq_len: int) -> bool:
    """transformers' switch: long factors iff ``max(position_ids) + 1 > original`` for the whole
    forward pass. A ``long-only`` spec carries short := long, so both answers run the same math."""
    return spec.policy == "long-only" or seq_len > spec.original_max_position_embeddings


def factor_set_for(spec: LongRoPESpec, seq_len: int) -> FactorSet:
    """Name of the factor set a forward pass reaching ``seq_len`` positions uses."""
    return "long" if uses_long_factors(spec, seq_len) else "short"


def _inv_freq_shape(dim: int, device: torch.device | None = None) -> torch.Tensor:
    # transformers: torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    return torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim


def inv_freq(spec: LongRoPESpec, which: FactorSet, layer: int = 0,
             device: torch.device | None = None) -> torch.Tensor:
    """fp32 inverse frequencies with factors, bitwise equal to transformers:
    ``1.0 / (ext_factors * base ** (arange(0, dim, 2).float() / dim))``."""
    factors = spec.factors(which, layer)
    ext_factors = torch.tensor(factors, dtype=torch.float32, device=device)
    return 1.0 / (ext_factors * spec.rope_theta ** _inv_freq_shape(spec.rotary_dim, device))


def original_inv_freq(spec: LongRoPESpec, device: torch.device | None = None) -> torch.Tensor:
    """fp32 inverse frequencies of plain RoPE (no factors): what rows below n_hat use."""
    return 1.0 / (spec.rope_theta ** _inv_freq_shape(spec.rotary_dim, device))


def _cos_sin(positions: torch.Tensor, freqs_inv: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    # transformers: freqs = pos.float() * inv_freq; emb = cat(freqs, freqs); cos = emb.cos() * scale
    freqs = positions[..., None].float() * freqs_inv.float()
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * scale, emb.sin() * scale


def plain_cos_sin(spec: LongRoPESpec, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain RoPE (no factors, no magnitude scale): what rows below the start-token threshold use."""
    return _cos_sin(position_ids, original_inv_freq(spec, position_ids.device), 1.0)


def cos_sin(spec: LongRoPESpec, position_ids: torch.Tensor, layer: int = 0,
            factor_set: FactorSet | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 cos/sin of shape ``position_ids.shape + (rotary_dim,)`` for one forward pass.

    The factor set follows the switch rule for this call (``max(position_ids) + 1``) unless
    ``factor_set`` names one; rows with ``position < n_hat`` are plain RoPE without the scale.

    Example:
        >>> from longrope_export.spec import LongRoPESpec
        >>> spec = LongRoPESpec(rotary_dim=4, rope_theta=10000.0, original_max_position_embeddings=8,
        ...                     max_position_embeddings=64, long_factors=((1.0, 4.0),),
        ...                     short_factors=((1.0, 4.0),), start_token=2)
        >>> cos, sin = cos_sin(spec, torch.arange(10)[None])
        >>> tuple(cos.shape)
        (1, 10, 4)
    """
    if factor_set is None:
        factor_set = factor_set_for(spec, int(position_ids.max()) + 1)
    device = position_ids.device
    cos, sin = _cos_sin(position_ids, inv_freq(spec, factor_set, layer, device), attention_factor(spec))
    if spec.start_token > 0:
        head = (position_ids < spec.start_token)[..., None]
        if bool(head.any()):
            plain_cos, plain_sin = plain_cos_sin(spec, position_ids)
            cos = torch.where(head, plain_cos, cos)
            sin = torch.where(head, plain_sin, sin)
    return cos, sin


def cos_sin_table(spec: LongRoPESpec, factor_set: FactorSet, start: int = 0, stop: int | None = None,
                  layer: int = 0, chunk: int = DEFAULT_CHUNK) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield ``(first_position, cos, sin)`` chunks of the table for positions ``[start, stop)``.

    Memory stays bounded by ``chunk`` rows whatever the range: 2,097,152 positions are produced
    32 chunks at a time, never as one 1 GiB table.
    """
    stop = spec.max_position_embeddings if stop is None else stop
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    for first in range(start, stop, chunk):
        positions = torch.arange(first, min(first + chunk, stop), dtype=torch.int64)
        cos, sin = cos_sin(spec, positions, layer, factor_set)
        yield first, cos, sin
