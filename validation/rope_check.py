"""``validate rope``: does stock transformers, reading the baked config.json, compute the recorded spec?

Compares fp32 cos/sin bitwise at positions {0, n_hat, original-1, original, original+1, max-1}:
stock transformers in the short regime (a call that stays below the original context) and the
long regime (a call that reaches past it) against ``rope.py`` on the spec in ``longrope.json``
(stock transformers has no start-token threshold, so that comparison runs with n_hat = 0); then
the project's loader, which honours n_hat, against ``rope.py`` on the full spec, and its rows
below n_hat against plain RoPE.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from longrope_export import rope
from longrope_export.errors import InputError
from longrope_export.hf_loader import LongRoPERotaryEmbedding, checkpoint_spec
from longrope_export.registry import architecture_for
from longrope_export.sources import read_json
from longrope_export.spec import LongRoPESpec


@dataclass
class RopeComparison:
    """One comparison of a runtime's cos/sin with the reference at some positions."""

    name: str
    runtime: str
    regime: str
    positions: list[int]
    max_abs_error: float
    bitwise_equal: bool
    note: str = ""


def probe_positions(spec: LongRoPESpec) -> list[int]:
    """The positions the check looks at (those that exist, sorted, without repeats)."""
    original, target, n_hat = spec.original_max_position_embeddings, spec.max_position_embeddings, spec.start_token
    wanted = {0, n_hat, original - 1, original, original + 1, target - 1}
    return sorted(p for p in wanted if 0 <= p < target)


def _compare(name: str, runtime: str, regime: str, positions: list[int],
             got: tuple[torch.Tensor, torch.Tensor], want: tuple[torch.Tensor, torch.Tensor],
             note: str = "") -> RopeComparison:
    err = max(float((g.float() - w.float()).abs().max()) for g, w in zip(got, want, strict=True))
    equal = all(torch.equal(g.float(), w.float()) for g, w in zip(got, want, strict=True))
    return RopeComparison(name, runtime, regime, positions, err, equal, note)


def stock_rotary(model_dir: Path) -> torch.nn.Module:
    """The stock transformers rotary embedding built from the checkpoint's config.json (no weights)."""
    from transformers import AutoConfig

    arch = architecture_for(read_json(model_dir / "config.json"), str(model_dir / "config.json"))
    config = AutoConfig.from_pretrained(str(model_dir))
    return arch.rotary_embedding_class()(config)


def check_rope(model_dir: Path) -> dict[str, Any]:
    """Run every comparison; ``passed`` is True only if all are bitwise equal."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise InputError("no config.json", path=model_dir, fix="give a checkpoint folder made by bake")
    spec = checkpoint_spec(model_dir)
    stock_spec = spec.replace(start_token=0)
    positions = probe_positions(spec)
    original = spec.original_max_position_embeddings
    short_pos = [p for p in positions if p < original]
    x = torch.zeros(1, dtype=torch.float32)
    rotary = stock_rotary(model_dir)
    ours = LongRoPERotaryEmbedding(spec)
    comparisons: list[RopeComparison] = []
    for regime, pos in (("short", short_pos), ("long", positions)):
        ids = torch.tensor([pos], dtype=torch.int64)
        want_set = rope.factor_set_for(spec, max(pos) + 1)
        note = "stock transformers ignores n_hat: compared with n_hat = 0" if spec.start_token else ""
        comparisons.append(_compare(f"transformers-{regime}", "transformers", regime, pos,
                                    rotary(x, ids), rope.cos_sin(stock_spec, ids), note))
        comparisons[-1].note = (comparisons[-1].note + f" factor set {want_set}").strip()
        comparisons.append(_compare(f"longrope-loader-{regime}", "longrope_export.load_model", regime, pos,
                                    ours(x, ids), rope.cos_sin(spec, ids)))
    head = [p for p in positions if p < spec.start_token]
    if head:
        # a long-regime call (it reaches max-1) whose first rows lie below n_hat
        ids = torch.tensor([head + [spec.max_position_embeddings - 1]], dtype=torch.int64)
        cos, sin = ours(x, ids)
        got = (cos[:, : len(head)], sin[:, : len(head)])
        plain = rope.plain_cos_sin(spec, torch.tensor([head], dtype=torch.int64))
        comparisons.append(_compare("below-n_hat-unscaled", "longrope_export.load_model", "long", head, got, plain,
                                    "rows below n_hat must be plain RoPE without the attention factor"))
    return {
        "model": str(model_dir),
        "passed": all(c.bitwise_equal for c in comparisons),
        "spec": {"rotary_dim": spec.rotary_dim, "original": original, "target": spec.max_position_embeddings,
                 "policy": spec.policy, "start_token": spec.start_token,
                 "attention_factor": rope.attention_factor(spec)},
        "comparisons": [asdict(c) for c in comparisons],
    }
