"""An independent fp32 implementation of REFERENCE.md s.2, written from the formula alone.

It imports nothing from the project, so the project's ``rope.py`` and stock transformers can
both be checked against it.
"""

from __future__ import annotations

import math

import torch


def reference_cos_sin(positions: list[int], factors: list[float], dim: int, base: float,
                      original: int, target: int, n_hat: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin (len(positions), dim) of LongRoPE with the given factor vector (already selected)."""
    scale = target / original
    mscale = 1.0 if scale <= 1.0 else math.sqrt(1 + math.log(scale) / math.log(original))
    exponent = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    inv = 1.0 / (torch.tensor(factors, dtype=torch.float32) * base ** exponent)
    plain_inv = 1.0 / (base ** exponent)
    rows_cos, rows_sin = [], []
    for position in positions:
        pos = torch.tensor([float(position)], dtype=torch.float32)
        if position < n_hat:
            angle, mag = pos * plain_inv, 1.0
        else:
            angle, mag = pos * inv, mscale
        angle = torch.cat((angle, angle))
        rows_cos.append(angle.cos() * mag)
        rows_sin.append(angle.sin() * mag)
    return torch.stack(rows_cos), torch.stack(rows_sin)
