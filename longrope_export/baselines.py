"""Context-extension baselines expressed as LongRoPE specs: they are factor vectors too.

- ``none``: factors 1, attention factor 1 (plain RoPE run past its context).
- ``pi``: position interpolation, every factor = s.
- ``ntk``: NTK-aware base change ``base' = base * s^(d/(d-2))``, i.e. ``lambda_i = s^(2i/(d-2))``.
- ``yarn``: transformers' YaRN ramp (beta_fast 32, beta_slow 1) with mscale ``0.1 ln s + 1``.
- ``longrope-init``: the same YaRN factors with LongRoPE's default attention factor: the
  YaRN-initialised vector the LongRoPE search starts from.
"""

from __future__ import annotations

import math

from .spec import LongRoPESpec, build_spec

METHODS = ("none", "pi", "ntk", "yarn", "longrope-init")


def pi_factors(n_pairs: int, scale: float) -> list[float]:
    return [scale] * n_pairs


def ntk_factors(n_pairs: int, scale: float) -> list[float]:
    dim = 2 * n_pairs
    return [scale ** (2 * i / (dim - 2)) for i in range(n_pairs)]


def yarn_factors(n_pairs: int, scale: float, base: float, original: int,
                 beta_fast: float = 32.0, beta_slow: float = 1.0) -> list[float]:
    """Per-pair factors equal to transformers' YaRN inverse frequencies (linear ramp, no truncation)."""
    dim = 2 * n_pairs

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), dim - 1)
    if low == high:
        high += 0.001  # as transformers: avoid a zero-width ramp
    factors = []
    for i in range(n_pairs):
        ramp = min(1.0, max(0.0, (i - low) / (high - low)))  # 0: extrapolate, 1: interpolate
        factors.append(1.0 / ((1.0 - ramp) + ramp / scale))
    return factors


def baseline_spec(method: str, *, rotary_dim: int, rope_theta: float, original: int, target: int) -> LongRoPESpec:
    """A ``long-only`` spec for one baseline method."""
    n_pairs, scale = rotary_dim // 2, target / original
    attention: float | None = None
    if method == "none":
        factors, attention = [1.0] * n_pairs, 1.0
    elif method == "pi":
        factors, attention = pi_factors(n_pairs, scale), 1.0
    elif method == "ntk":
        factors, attention = ntk_factors(n_pairs, scale), 1.0
    elif method in ("yarn", "longrope-init"):
        factors = yarn_factors(n_pairs, scale, rope_theta, original)
        attention = 0.1 * math.log(scale) + 1.0 if method == "yarn" else None
    else:
        raise ValueError(f"unknown baseline {method!r}; choose from {', '.join(METHODS)}")
    return build_spec(rotary_dim=rotary_dim, rope_theta=rope_theta, original=original, target=target,
                      long_factors=(tuple(factors),), attention_factor=attention, source=f"<baseline {method}>")
