"""The LongRoPE spec: one frozen, validated object every converter and validator reads.

Loaders (``sources.py``) normalise every input dialect into a :class:`LongRoPESpec`;
nothing else in the project reads raw factor files or config dicts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import InputError

Policy = Literal["long-only", "switch"]
POLICIES: tuple[str, ...] = ("long-only", "switch")
FactorRows = tuple[tuple[float, ...], ...]

SPEC_SCHEMA = "longrope-export/spec"
SPEC_VERSION = 1


def as_rows(factors: Any) -> FactorRows:
    """Normalise one vector or a list of per-layer vectors into a tuple of rows."""
    items = list(factors)
    if items and isinstance(items[0], (list, tuple)):
        return tuple(tuple(float(x) for x in row) for row in items)
    return (tuple(float(x) for x in items),)


def collapse_rows(rows: FactorRows) -> FactorRows:
    """Identical per-layer rows (as the published LongRoPE files have) collapse to one vector."""
    return rows[:1] if rows and all(row == rows[0] for row in rows) else rows


def check_factor_rows(rows: FactorRows, n_pairs: int | None, where: str, what: str) -> None:
    """Raise :class:`InputError` naming ``where`` for empty, ragged, wrong-length or non-positive rows."""
    if not rows or not rows[0]:
        raise InputError(f"no {what} factors found", path=where, fix="give one float per rotary pair")
    for layer, row in enumerate(rows):
        label = what if len(rows) == 1 else f"{what} factors of row {layer}"
        if n_pairs is not None and len(row) != n_pairs:
            raise InputError(
                f"{label} has {len(row)} values but the model's rotary dim {2 * n_pairs} needs {n_pairs}",
                path=where,
                fix=f"use a factor file made for rotary dim {2 * n_pairs} (head_dim x partial_rotary_factor)",
            )
        if n_pairs is None and len(row) != len(rows[0]):
            raise InputError(f"{label} has {len(row)} values, row 0 has {len(rows[0])}", path=where,
                             fix="give every layer the same number of factors")
        for index, value in enumerate(row):
            if not math.isfinite(value):
                raise InputError(f"{what} factor [{index}] is {value}", path=where,
                                 fix="factors must be finite numbers: re-export the search result")
            if value <= 0:
                raise InputError(f"{what} factor [{index}] is {value}, factors must be > 0", path=where,
                                 fix="a factor divides the rotary angle: use values >= 1")


def factor_warnings(rows: FactorRows, name: str, scale: float | None = None) -> list[str]:
    """Warnings for non-monotone factors, factors above 1.25*s and factors below 1 (all real:
    the published Mistral files are non-monotone and some LLaMA2 files exceed 1.25*s)."""
    notes: list[str] = []
    distinct = collapse_rows(rows)
    for layer, row in enumerate(distinct):
        label = name if len(distinct) == 1 else f"{name} (row {layer})"
        drops = [i for i in range(1, len(row)) if row[i] < row[i - 1]]
        if drops:
            notes.append(f"{label} factors are not monotone non-decreasing (first drop at index {drops[0]}, "
                         f"{len(drops)} drops)")
        if scale is not None:
            ceiling = 1.25 * scale
            above = [x for x in row if x > ceiling]
            if above:
                notes.append(f"{label} factors exceed 1.25*s = {ceiling:g} ({len(above)} values, max {max(above):g})")
        below = [x for x in row if x < 1.0]
        if below:
            notes.append(f"{label} factors below 1.0 extrapolate ({len(below)} values, min {min(below):g})")
    return notes


@dataclass(frozen=True)
class LongRoPESpec:
    """Everything that defines a LongRoPE rotary embedding.

    Example:
        >>> spec = LongRoPESpec(rotary_dim=4, rope_theta=10000.0, original_max_position_embeddings=256,
        ...                     max_position_embeddings=2048, long_factors=((1.0, 8.0),),
        ...                     short_factors=((1.0, 8.0),))
        >>> spec.scale
        8.0
    """

    rotary_dim: int
    rope_theta: float
    original_max_position_embeddings: int
    max_position_embeddings: int
    long_factors: FactorRows
    short_factors: FactorRows
    policy: Policy = "long-only"
    start_token: int = 0
    attention_factor: float | None = None
    source: str = field(default="<spec>", compare=False)

    def __post_init__(self) -> None:
        where = self.source
        if self.rotary_dim <= 0 or self.rotary_dim % 2:
            raise InputError(f"rotary dim {self.rotary_dim} must be a positive even number", path=where,
                             fix="check head_dim and partial_rotary_factor in config.json")
        if not (math.isfinite(self.rope_theta) and self.rope_theta > 0):
            raise InputError(f"rope_theta {self.rope_theta} must be a positive number", path=where,
                             fix="set rope_theta (usually 10000)")
        original, target = self.original_max_position_embeddings, self.max_position_embeddings
        if original < 1:
            raise InputError(f"original context {original} must be >= 1", path=where,
                             fix="pass --original-max-position-embeddings")
        if original >= target:
            raise InputError(
                f"original context {original} >= target context {target}: nothing to extend", path=where,
                fix="pass --max-position-embeddings larger than --original-max-position-embeddings")
        if self.policy not in POLICIES:
            raise InputError(f"switch policy {self.policy!r} is not one of {', '.join(POLICIES)}", path=where,
                             fix="use --policy long-only or --policy switch")
        if not 0 <= self.start_token < original:
            raise InputError(
                f"start-token threshold n_hat={self.start_token} must be in [0, {original})", path=where,
                fix="pass --start-token between 0 and the original context minus 1")
        if self.attention_factor is not None and not (
                math.isfinite(self.attention_factor) and self.attention_factor > 0):
            raise InputError(f"attention factor {self.attention_factor} must be a positive number",
                             path=where, fix="omit --attention-factor to use the default")
        check_factor_rows(self.long_factors, self.n_pairs, where, "long")
        check_factor_rows(self.short_factors, self.n_pairs, where, "short")
        if self.policy == "long-only" and self.short_factors != self.long_factors:
            raise InputError("policy long-only runs the long factors at every length, but short factors "
                             "differ", path=where, fix="use --policy switch to keep separate short factors")

    @property
    def n_pairs(self) -> int:
        """Rotary dimension pairs: the length of every factor vector."""
        return self.rotary_dim // 2

    @property
    def scale(self) -> float:
        """``s = target / original``."""
        return self.max_position_embeddings / self.original_max_position_embeddings

    @property
    def per_layer(self) -> bool:
        """True when some layers carry different factors (HF config and GGUF cannot hold that)."""
        return len(collapse_rows(self.long_factors)) > 1 or len(collapse_rows(self.short_factors)) > 1

    def factors(self, which: Literal["long", "short"], layer: int | None = None) -> tuple[float, ...]:
        """One factor vector; ``layer=None`` requires every layer to share it."""
        rows = self.long_factors if which == "long" else self.short_factors
        if layer is not None:
            return rows[layer if len(rows) > 1 else 0]
        rows = collapse_rows(rows)
        if len(rows) > 1:
            raise InputError(f"{which} factors differ between layers; this format holds one vector",
                             path=self.source, fix="give one factor vector (identical rows collapse)")
        return rows[0]

    def replace(self, **changes: Any) -> LongRoPESpec:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def warnings(self) -> list[str]:
        """Real-but-unusual properties worth telling the user about (never rejected)."""
        notes = factor_warnings(self.long_factors, "long", self.scale)
        if self.policy == "switch":
            notes += factor_warnings(self.short_factors, "short", self.scale)
        return notes

    def to_dict(self) -> dict[str, Any]:
        """The versioned JSON form (``schema``/``version`` first)."""
        return {
            "schema": SPEC_SCHEMA,
            "version": SPEC_VERSION,
            "rotary_dim": self.rotary_dim,
            "rope_theta": self.rope_theta,
            "original_max_position_embeddings": self.original_max_position_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "policy": self.policy,
            "start_token": self.start_token,
            "attention_factor": self.attention_factor,
            "long_factors": [list(row) for row in self.long_factors],
            "short_factors": [list(row) for row in self.short_factors],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<spec>") -> LongRoPESpec:
        """Read the JSON form written by :meth:`to_dict`, checking schema and version."""
        if data.get("schema") != SPEC_SCHEMA:
            raise InputError(f"schema is {data.get('schema')!r}, expected {SPEC_SCHEMA!r}", path=source,
                             fix="give a spec written by longrope-export")
        if data.get("version") != SPEC_VERSION:
            raise InputError(f"spec version {data.get('version')!r} is not supported (this tool reads "
                             f"version {SPEC_VERSION})", path=source, fix="upgrade longrope-export")
        required = ("rotary_dim", "rope_theta", "original_max_position_embeddings",
                    "max_position_embeddings", "long_factors")
        missing = [key for key in required if key not in data]
        if missing:
            raise InputError(f"missing key(s) {', '.join(missing)}", path=source,
                             fix="write the spec with longrope-export")
        long_rows = as_rows(data["long_factors"])
        return cls(
            rotary_dim=int(data["rotary_dim"]),
            rope_theta=float(data["rope_theta"]),
            original_max_position_embeddings=int(data["original_max_position_embeddings"]),
            max_position_embeddings=int(data["max_position_embeddings"]),
            long_factors=long_rows,
            short_factors=as_rows(data.get("short_factors") or long_rows),
            policy=data.get("policy", "long-only"),
            start_token=int(data.get("start_token", 0)),
            attention_factor=None if data.get("attention_factor") is None else float(data["attention_factor"]),
            source=source,
        )


def build_spec(
    *,
    rotary_dim: int,
    rope_theta: float,
    original: int,
    target: int,
    long_factors: FactorRows,
    short_factors: FactorRows | None = None,
    policy: str | None = None,
    start_token: int = 0,
    attention_factor: float | None = None,
    source: str = "<spec>",
) -> LongRoPESpec:
    """Apply the policy defaults: ``long-only`` without short factors, ``switch`` with them.

    ``switch`` without short factors is refused: baking short factors of 1.0 gives, below the
    original context, plain RoPE with logits scaled by mscale^2 -- a model nobody trained.
    """
    long_rows = collapse_rows(long_factors)
    short_rows = None if short_factors is None else collapse_rows(short_factors)
    if policy is None:
        policy = "long-only" if short_rows is None or short_rows == long_rows else "switch"
    if policy == "switch" and short_rows is None:
        raise InputError("policy switch needs short factors", path=source,
                         fix="pass --short-factors FILE (e.g. a 4k_*/8k_* recovery set) or use --policy long-only")
    if policy == "long-only":
        if short_rows is not None and short_rows != long_rows:
            raise InputError("short factors given with policy long-only", path=source,
                             fix="drop --short-factors or use --policy switch")
        short_rows = long_rows
    assert short_rows is not None
    return LongRoPESpec(
        rotary_dim=rotary_dim, rope_theta=float(rope_theta), original_max_position_embeddings=original,
        max_position_embeddings=target, long_factors=long_rows, short_factors=short_rows,
        policy=policy,  # type: ignore[arg-type]
        start_token=start_token, attention_factor=attention_factor, source=source,
    )
