"""Loaders: every form factors come in, normalised once into rows or a :class:`LongRoPESpec`.

Forms: LongRoPE search CSVs (one float per line, or rows x columns with one row per layer),
Hugging Face ``config.json`` in every dialect (``rope_scaling`` / ``rope_parameters``,
``type`` / ``rope_type``, ``su``), and the project's own JSON spec (``longrope.json`` included).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError
from .spec import SPEC_SCHEMA, FactorRows, LongRoPESpec, as_rows, check_factor_rows, collapse_rows

#: Top-level config.json key under which the project stores what HF has no field for.
CONFIG_KEY = "longrope_export"
LONGROPE_TYPES = ("longrope", "su")


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, with a clear error for missing or malformed files."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("file not found", path=path, fix="check the path") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"not valid JSON ({error})", path=path, fix="give a JSON file") from None
    if not isinstance(data, dict):
        raise InputError("expected a JSON object", path=path, fix="give a config or spec JSON file")
    return data


def read_factor_csv(path: Path) -> FactorRows:
    """Read a LongRoPE factor file; identical per-layer rows collapse to one vector.

    Example:
        >>> rows = read_factor_csv(Path("init_yarn_8x_one_per_line.csv"))  # doctest: +SKIP
        >>> len(rows), len(rows[0])  # doctest: +SKIP
        (1, 64)
    """
    return collapse_rows(read_factor_table(path))


def read_factor_table(path: Path) -> FactorRows:
    """Read a LongRoPE factor file as written: one float per line, or one comma-separated row per layer."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("factor file not found", path=path, fix="check the path") from None
    except UnicodeDecodeError:
        raise InputError("not a text file", path=path, fix="give a CSV of floats") from None
    rows: list[list[float]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        cells = [cell.strip() for cell in line.replace(";", ",").split(",") if cell.strip()]
        if not cells or cells[0].startswith("#"):
            continue
        try:
            rows.append([float(cell) for cell in cells])
        except ValueError:
            bad = next(cell for cell in cells if not _is_float(cell))
            raise InputError(f"line {number}: {bad!r} is not a number", path=path,
                             fix="the file must hold only comma-separated floats, no header") from None
    if not rows:
        raise InputError("no factors found", path=path, fix="give one float per line or one row per layer")
    table: FactorRows
    if all(len(row) == 1 for row in rows):
        table = (tuple(row[0] for row in rows),)
    else:
        table = tuple(tuple(row) for row in rows)
    check_factor_rows(table, None, str(path), "long")
    return table


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class ModelGeometry:
    """What a config.json says about the rotary embedding, whatever its dialect."""

    model_type: str
    rotary_dim: int
    rope_theta: float
    max_position_embeddings: int
    original_max_position_embeddings: int | None
    num_hidden_layers: int | None


def rope_block(config: dict[str, Any]) -> dict[str, Any] | None:
    """The active RoPE dict: ``rope_scaling`` wins over ``rope_parameters`` as in transformers 5.x."""
    block = config.get("rope_scaling") or config.get("rope_parameters")
    if block is not None and not isinstance(block, dict):
        return None
    return block


def rope_type(block: dict[str, Any] | None) -> str:
    """Normalised rope type: ``su`` is the pre-July-2024 name of ``longrope``."""
    if not block:
        return "default"
    kind = str(block.get("rope_type", block.get("type", "default")))
    return "longrope" if kind == "su" else kind


def model_geometry(config: dict[str, Any], source: str = "config.json") -> ModelGeometry:
    """Rotary dim (head_dim x partial_rotary_factor), theta and contexts from any dialect."""
    block = rope_block(config) or {}
    try:
        hidden, heads = config.get("hidden_size"), config.get("num_attention_heads")
        head_dim = config.get("head_dim") or (int(hidden) // int(heads) if hidden and heads else None)
        if head_dim is None:
            raise KeyError("head_dim (or hidden_size and num_attention_heads)")
        partial = config.get("partial_rotary_factor") or block.get("partial_rotary_factor") or 1.0
        max_pos = config.get("max_position_embeddings")
        if max_pos is None:
            raise KeyError("max_position_embeddings")
    except KeyError as error:
        raise InputError(f"missing config key {error.args[0]}", path=source,
                         fix="give the config.json of a RoPE decoder model") from None
    theta = block.get("rope_theta") or config.get("rope_theta") or 10000.0
    original = config.get("original_max_position_embeddings") or block.get("original_max_position_embeddings")
    return ModelGeometry(
        model_type=str(config.get("model_type", "")),
        rotary_dim=int(int(head_dim) * float(partial)),
        rope_theta=float(theta),
        max_position_embeddings=int(max_pos),
        original_max_position_embeddings=None if original is None else int(original),
        num_hidden_layers=config.get("num_hidden_layers"),
    )


def spec_from_config(config: dict[str, Any], source: str = "config.json") -> LongRoPESpec | None:
    """The LongRoPE spec a config.json carries, or ``None`` when it has no LongRoPE.

    Follows transformers 5.x: the attention factor comes from an explicit ``attention_factor``,
    else from ``factor`` when present, else from max / original.
    """
    block = rope_block(config)
    if rope_type(block) != "longrope":
        return None
    assert block is not None
    geometry = model_geometry(config, source)
    for key in ("long_factor", "short_factor"):
        if key not in block:
            raise InputError(f"rope type longrope without {key}", path=source,
                             fix="this is the silent-drop case: re-bake the factors with longrope-export bake")
    original = geometry.original_max_position_embeddings or geometry.max_position_embeddings
    target = geometry.max_position_embeddings
    attention = block.get("attention_factor")
    factor = block.get("factor")
    if attention is None and factor is not None and not math.isclose(float(factor), target / original):
        # 5.x derives the scale from `factor`; keep what it computes as an explicit value.
        attention = 1.0 if factor <= 1 else math.sqrt(1 + math.log(float(factor)) / math.log(original))
    extra = config.get(CONFIG_KEY) or {}
    long_rows = as_rows(block["long_factor"])
    short_rows = as_rows(block["short_factor"])
    policy = extra.get("switch_policy") or ("long-only" if short_rows == long_rows else "switch")
    return LongRoPESpec(
        rotary_dim=geometry.rotary_dim, rope_theta=geometry.rope_theta,
        original_max_position_embeddings=original, max_position_embeddings=target,
        long_factors=long_rows, short_factors=short_rows, policy=policy,
        start_token=int(extra.get("start_token", 0)),
        attention_factor=None if attention is None else float(attention), source=source,
    )


def load_spec_json(path: Path) -> LongRoPESpec:
    """The project's JSON spec (``longrope.json`` included)."""
    return LongRoPESpec.from_dict(read_json(path), source=str(path))


@dataclass(frozen=True)
class FactorSource:
    """What a ``--factors`` argument held: factor rows, or a whole spec (JSON spec, HF config)."""

    path: Path
    kind: str  # "csv" | "spec" | "hf-config"
    long_factors: FactorRows
    short_factors: FactorRows | None = None
    spec: LongRoPESpec | None = None


def read_factor_source(path: Path) -> FactorSource:
    """Read factors from a CSV, a JSON spec, a config.json or a model folder."""
    path = Path(path)
    if path.is_dir():
        for name in ("longrope.json", "config.json"):
            if (path / name).exists():
                return read_factor_source(path / name)
        raise InputError("folder has no longrope.json or config.json", path=path,
                         fix="give a factor CSV, a JSON spec or a model folder")
    if not path.exists():
        raise InputError("file not found", path=path, fix="check the path")
    if path.suffix.lower() == ".json":
        data = read_json(path)
        if data.get("schema") == SPEC_SCHEMA:
            spec = LongRoPESpec.from_dict(data, source=str(path))
            return FactorSource(path, "spec", spec.long_factors, spec.short_factors, spec)
        spec_or_none = spec_from_config(data, str(path))
        if spec_or_none is None:
            raise InputError(f"config has no LongRoPE (rope type {rope_type(rope_block(data))!r})", path=path,
                             fix="give a config with rope_scaling type longrope, a factor CSV or a spec")
        return FactorSource(path, "hf-config", spec_or_none.long_factors, spec_or_none.short_factors,
                            spec_or_none)
    return FactorSource(path, "csv", read_factor_csv(path))
