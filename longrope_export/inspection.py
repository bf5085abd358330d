"""``inspect``: what a factor file, spec, config or checkpoint carries, as a JSON-ready dict."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from . import rope
from .errors import InputError
from .registry import ARCHITECTURES
from .sources import SPEC_SCHEMA, model_geometry, read_factor_table, read_json, rope_block, rope_type, spec_from_config
from .spec import FactorRows, LongRoPESpec, collapse_rows, factor_warnings

#: microsoft/LongRoPE's published file names: {eval_len}_{la2|mis}_{ft_len}; both models start at 4096.
LONGROPE_NAME = re.compile(r"(?:^|_)(ft|\d+k)_(la2|mis)_(\d+)k(?:\.|$)")
LONGROPE_ORIGINAL = 4096


def contexts_from_name(path: Path) -> tuple[int, int] | None:
    """(original, target) implied by a LongRoPE file name such as ``2048k_la2_256k.csv``."""
    match = LONGROPE_NAME.search(path.name)
    if not match:
        return None
    eval_len, _, ft_len = match.groups()
    target = int(ft_len) * 1024 if eval_len == "ft" else int(eval_len[:-1]) * 1024
    return LONGROPE_ORIGINAL, target


def _rows_summary(rows: FactorRows) -> dict[str, Any]:
    distinct = collapse_rows(rows)
    flat = [x for row in distinct for x in row]
    return {"n_factors": len(distinct[0]), "rows": len(rows), "per_layer": len(distinct) > 1,
            "min": min(flat), "max": max(flat),
            "monotone": all(row[i] >= row[i - 1] for row in distinct for i in range(1, len(row)))}


def spec_summary(spec: LongRoPESpec) -> dict[str, Any]:
    """A spec as inspect reports it (factors included)."""
    data = spec.to_dict()
    data.pop("schema"), data.pop("version")
    data.update(scale=spec.scale, effective_attention_factor=rope.attention_factor(spec),
                n_long_factors=spec.n_pairs, n_short_factors=spec.n_pairs, per_layer=spec.per_layer,
                warnings=spec.warnings())
    return data


def inspect_path(path: Path, original: int | None = None, target: int | None = None) -> dict[str, Any]:
    """Describe ``path``: a factor CSV, a JSON spec / longrope.json, a config.json, a model folder or a GGUF file."""
    path = Path(path)
    if path.suffix.lower() == ".gguf":
        from converters.gguf_inspect import inspect_gguf

        return inspect_gguf(path)
    if path.is_dir():
        if (path / "config.json").exists():
            return _inspect_config(path / "config.json", path)
        raise InputError("folder has no config.json", path=path, fix="give a model folder, a factor file or a spec")
    if not path.exists():
        raise InputError("file not found", path=path, fix="check the path")
    if path.suffix.lower() == ".onnx":
        return _inspect_onnx(path)
    if path.suffix.lower() == ".json":
        data = read_json(path)
        if data.get("schema") == SPEC_SCHEMA:
            spec = LongRoPESpec.from_dict(data, source=str(path))
            return {"kind": "spec", "path": str(path), "longrope": spec_summary(spec),
                    "provenance": data.get("provenance")}
        return _inspect_config(path, None)
    rows = read_factor_table(path)
    report: dict[str, Any] = {"kind": "factor-file", "path": str(path), **_rows_summary(rows),
                              "rotary_dim": 2 * len(rows[0])}
    inferred = contexts_from_name(path)
    contexts_source = "options" if original or target else None
    if inferred and not (original and target):
        original, target = original or inferred[0], target or inferred[1]
        contexts_source = "file name (microsoft/LongRoPE naming)"
    scale = target / original if original and target else None
    report["contexts"] = {"original": original, "target": target, "scale": scale, "from": contexts_source}
    report["warnings"] = factor_warnings(rows, "long", scale)
    return report


def _inspect_config(config_path: Path, model_dir: Path | None) -> dict[str, Any]:
    config = read_json(config_path)
    geometry = model_geometry(config, str(config_path))
    block = rope_block(config)
    spec = spec_from_config(config, str(config_path))
    report: dict[str, Any] = {
        "kind": "model" if model_dir else "hf-config", "path": str(model_dir or config_path),
        "model_type": geometry.model_type, "supported": geometry.model_type in ARCHITECTURES,
        "rotary_dim": geometry.rotary_dim, "rope_theta": geometry.rope_theta,
        "rope_type": rope_type(block), "config_dialect": "rope_scaling" if config.get("rope_scaling")
        else ("rope_parameters" if config.get("rope_parameters") else None),
        "longrope": None if spec is None else spec_summary(spec),
    }
    if model_dir is not None and (model_dir / "longrope.json").exists():
        record = read_json(model_dir / "longrope.json")
        report["provenance"] = record.get("provenance")
        recorded = LongRoPESpec.from_dict(record, source=str(model_dir / "longrope.json"))
        report["config_matches_longrope_json"] = spec is not None and spec.replace(
            start_token=recorded.start_token, policy=recorded.policy) == recorded
    return report


def _inspect_onnx(path: Path) -> dict[str, Any]:
    """An exported ONNX model: the spec and policies its ``metadata_props`` record."""
    from converters.onnx_export import read_onnx_spec

    spec, props = read_onnx_spec(path)
    return {"kind": "onnx", "path": str(path), "longrope": spec_summary(spec),
            "onnx": {key.removeprefix("longrope."): value for key, value in props.items() if key != "longrope.spec"}}
