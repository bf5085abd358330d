"""``validate parity``: does the candidate compute what the reference checkpoint computes?

Two gates, both must hold:

1. Spec: the LongRoPE read back out of the candidate equals the reference's (factors bitwise in
   fp32, attention factor, original and target context, rotary dim, theta). What the candidate's
   runtime cannot express (n_hat > 0 in llama.cpp; llama.cpp's per-context switch for a ``switch``
   spec) is not an equality test: the report states it and its measured effect on the logits, and
   it fails the gate unless ``allow_lossy``.
2. Logits: on the same token ids, at lengths on both sides of the switch, max abs error within the
   runtime/dtype tolerance (``tolerances.py``), KL divergence and top-1 agreement.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from longrope_export import rope
from longrope_export.hf_loader import checkpoint_spec
from longrope_export.spec import LongRoPESpec

from .runtimes import Candidate, open_candidate
from .tolerances import Tolerance, tolerance_for


@dataclass
class LengthResult:
    length: int
    factor_set_reference: str
    factor_set_candidate: str
    logit_scale: float
    max_abs: float
    mean_abs: float
    kl: float
    top1: float
    tolerance: float
    passed: bool
    worst_position: int


@dataclass
class ParityReport:
    reference: str
    candidate: str
    runtime: str
    dtype: str
    spec_checks: list[dict[str, Any]] = field(default_factory=list)
    lossy: list[dict[str, Any]] = field(default_factory=list)
    lengths: list[LengthResult] = field(default_factory=list)
    allow_lossy: bool = False

    @property
    def spec_passed(self) -> bool:
        return all(c["passed"] for c in self.spec_checks) and (self.allow_lossy or not self.lossy)

    @property
    def logits_passed(self) -> bool:
        return all(r.passed for r in self.lengths)

    @property
    def passed(self) -> bool:
        return self.spec_passed and self.logits_passed

    def worst(self) -> dict[str, Any] | None:
        if not self.lengths:
            return None
        w = max(self.lengths, key=lambda r: r.max_abs / r.tolerance)
        return {"length": w.length, "max_abs": w.max_abs, "tolerance": w.tolerance,
                "ratio": w.max_abs / w.tolerance, "position": w.worst_position}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(passed=self.passed, spec_passed=self.spec_passed, logits_passed=self.logits_passed,
                    worst=self.worst())
        return data


def _f32(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).astype(np.float32)


def compare_specs(ref: LongRoPESpec, cand: LongRoPESpec | None) -> list[dict[str, Any]]:
    """Field-by-field equality of the LongRoPE carried by the candidate (fp32 where the runtime is fp32)."""
    if cand is None:
        return [{"check": "candidate carries LongRoPE", "passed": False, "reference": "longrope",
                 "candidate": None}]
    checks = []

    def add(name: str, want: Any, got: Any, equal: bool) -> None:
        checks.append({"check": name, "passed": bool(equal), "reference": want, "candidate": got})

    for which in ("long", "short"):
        want, got = _f32(ref.factors(which)), _f32(cand.factors(which))
        same = want.shape == got.shape and bool(np.array_equal(want, got))
        diff = None if want.shape != got.shape else int(np.argmax(want != got)) if not same else None
        add(f"{which} factors (fp32, bitwise)", f"{len(want)} values", f"{len(got)} values"
            + ("" if same or diff is None else f"; first difference at [{diff}]: {got[diff]!r} vs {want[diff]!r}"),
            same)
    att_ref, att_cand = rope.attention_factor(ref), rope.attention_factor(cand)
    add("attention factor (fp32)", att_ref, att_cand, np.float32(att_ref) == np.float32(att_cand))
    for name in ("original_max_position_embeddings", "max_position_embeddings", "rotary_dim"):
        add(name, getattr(ref, name), getattr(cand, name), getattr(ref, name) == getattr(cand, name))
    add("rope_theta (fp32)", ref.rope_theta, cand.rope_theta, np.float32(ref.rope_theta) == np.float32(cand.rope_theta))
    return checks


def default_lengths(spec: LongRoPESpec) -> list[int]:
    """One length below the original context and one past it (both within the target)."""
    original = spec.original_max_position_embeddings
    short = min(64, original)
    long = min(original + 44, spec.max_position_embeddings)
    return sorted({short, long})


def kl_and_top1(ref: np.ndarray, cand: np.ndarray) -> tuple[float, float]:
    """Mean KL(ref || cand) over positions and the share of positions with the same argmax."""
    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        x = x - x.max(axis=-1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))

    lp, lq = log_softmax(ref), log_softmax(cand)
    kl = float((np.exp(lp) * (lp - lq)).sum(axis=-1).mean())
    top1 = float((ref.argmax(-1) == cand.argmax(-1)).mean())
    return max(kl, 0.0), top1


def token_ids(vocab: int, length: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=length, dtype=np.int64)


class ReferenceRunner:
    """The reference checkpoint in transformers, with any spec patched in (n_hat honoured)."""

    def __init__(self, path: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
        self.vocab = int(self.model.config.vocab_size)

    def logits(self, spec: LongRoPESpec, ids: np.ndarray) -> np.ndarray:
        import torch

        from longrope_export.hf_loader import patch_rotary

        patch_rotary(self.model, spec)
        with torch.no_grad():
            return self.model(input_ids=torch.as_tensor(ids)[None]).logits[0].float().numpy()


def run_parity(reference: Path, candidate: Path, lengths: list[int] | None = None, allow_lossy: bool = False,
               tolerance: Tolerance | None = None) -> ParityReport:
    """Compare ``candidate`` with the baked ``reference`` checkpoint."""
    ref_spec = checkpoint_spec(Path(reference))
    cand: Candidate = open_candidate(Path(candidate))
    report = ParityReport(str(reference), str(candidate), cand.runtime, cand.dtype, allow_lossy=allow_lossy)
    report.spec_checks = compare_specs(ref_spec, cand.spec)
    runner = ReferenceRunner(Path(reference))
    tol = tolerance or tolerance_for(cand.runtime, cand.dtype)
    lengths = lengths or default_lengths(ref_spec)
    expressible = ref_spec
    if ref_spec.start_token > 0 and not cand.expresses_start_token:
        expressible = expressible.replace(start_token=0)
    for length in lengths:
        ids = token_ids(runner.vocab, length)
        factor_set = rope.factor_set_for(ref_spec, length)
        want = runner.logits(ref_spec, ids)
        if expressible is not ref_spec:
            lossless = want
            want = runner.logits(expressible, ids)
            report.lossy.append({"what": f"n_hat={ref_spec.start_token}: {cand.runtime} has no start-token threshold",
                                 "length": length, "max_abs_effect": float(np.abs(lossless - want).max())})
        got = cand.logits(ids, factor_set)
        report.lengths.append(_measure(length, factor_set, want, got, tol))
    if ref_spec.policy == "switch" and cand.switch_rule == "per-context":
        report.lossy.append({"what": f"{cand.runtime} picks the factor set once per context (n_ctx > original), "
                                     "not per forward pass; the check ran each length with a context that selects "
                                     "the reference's set", "length": None, "max_abs_effect": None})
    return report


def _measure(length: int, factor_set: str, want: np.ndarray, got: np.ndarray, tol: Tolerance) -> LengthResult:
    if got.shape != want.shape:
        return LengthResult(length, factor_set, "?", float(np.abs(want).max()), float("inf"), float("inf"),
                            float("inf"), 0.0, 0.0, False, -1)
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    scale = float(np.abs(want).max())
    kl, top1 = kl_and_top1(want, got)
    allowed = tol.max_abs(scale, length)
    passed = float(err.max()) <= allowed and kl <= tol.max_kl and top1 >= tol.min_top1
    return LengthResult(length, factor_set, factor_set, scale, float(err.max()), float(err.mean()), kl, top1,
                        allowed, passed, int(err.max(axis=-1).argmax()))
