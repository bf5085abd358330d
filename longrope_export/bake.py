"""``bake``: write LongRoPE factors and the start-token threshold into a Hugging Face checkpoint.

Weights are copied byte for byte (or hard-linked) and verified; the config is rewritten in the
portable dialect of the architecture; ``longrope.json`` records the spec and its provenance.
Everything is written into a temporary folder beside the output and renamed at the end.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .checkpoint import CopiedFile, atomic_output_dir, check_safetensors, copy_verified, files_to_copy, write_text
from .errors import InputError
from .registry import Architecture, architecture_for
from .sources import FactorSource, model_geometry, read_factor_source, read_json, sha256_file, spec_from_config
from .spec import FactorRows, LongRoPESpec, build_spec, check_factor_rows, collapse_rows

LONGROPE_JSON = "longrope.json"
CHECKPOINT_SCHEMA = "longrope-export/checkpoint"


@dataclass(frozen=True)
class BakeOptions:
    """What the user asked for; ``None`` means "take it from the factor file, then the base config"."""

    factors: Path | None = None
    short_factors: Path | None = None
    policy: str | None = None
    start_token: int | None = None
    original_max_position_embeddings: int | None = None
    max_position_embeddings: int | None = None
    attention_factor: float | None = None
    sliding_window: str = "drop"
    transformers5_only: bool = False
    link: bool = False
    force: bool = False

    def changes_longrope(self) -> bool:
        """True when the options change the checkpoint's LongRoPE (factors, contexts, policy, n_hat...):
        ``convert`` then bakes on the fly first."""
        return any(value is not None for value in (
            self.factors, self.short_factors, self.policy, self.start_token,
            self.original_max_position_embeddings, self.max_position_embeddings, self.attention_factor))


@dataclass
class BakePlan:
    """Everything decided before a byte is written."""

    model_dir: Path
    arch: Architecture
    base_config: dict[str, Any]
    spec: LongRoPESpec
    config: dict[str, Any]
    copies: list[Path]
    notes: list[str] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass
class BakeResult:
    """What bake wrote."""

    output: Path
    spec: LongRoPESpec
    files: list[CopiedFile]
    notes: list[str]


def _short_rows(path: Path, n_pairs: int) -> FactorRows:
    source = read_factor_source(path)
    rows = source.short_factors if source.kind != "csv" and source.short_factors else source.long_factors
    check_factor_rows(rows, n_pairs, str(path), "short")
    return collapse_rows(rows)


def _first(*values: Any) -> Any:
    return next((value for value in values if value is not None), None)


def resolve_spec(model_dir: Path, options: BakeOptions) -> tuple[LongRoPESpec, Architecture, dict[str, Any],
                                                               list[str], FactorSource | None]:
    """Merge options, the factor file and the base config into one validated spec."""
    config_path = model_dir / "config.json"
    if not model_dir.is_dir():
        raise InputError("model folder not found", path=model_dir, fix="give a folder with config.json")
    base = read_json(config_path)
    arch = architecture_for(base, str(config_path))
    geometry = model_geometry(base, str(config_path))
    existing = spec_from_config(base, str(config_path))
    notes: list[str] = []

    source = read_factor_source(options.factors) if options.factors is not None else None
    given = source.spec if source is not None else None
    if source is None and existing is None:
        raise InputError("no factors given and the base config has no LongRoPE", path=config_path,
                         fix="pass --factors FILE")
    where = str(options.factors if options.factors is not None else config_path)
    if given is not None and (given.rotary_dim, given.rope_theta) != (geometry.rotary_dim, geometry.rope_theta):
        raise InputError(f"spec is for rotary dim {given.rotary_dim}, theta {given.rope_theta} but the model has "
                         f"{geometry.rotary_dim}, {geometry.rope_theta}", path=where,
                         fix="use factors searched for this model")
    n_pairs = geometry.rotary_dim // 2
    long_rows = source.long_factors if source is not None else existing.long_factors  # type: ignore[union-attr]
    check_factor_rows(long_rows, n_pairs, where, "long")
    layers = geometry.num_hidden_layers
    if len(long_rows) > 1 and layers is not None and len(long_rows) != layers:
        raise InputError(f"{len(long_rows)} factor rows but the model has {layers} layers", path=where,
                         fix="give one row per decoder layer, or one vector")

    short_rows: FactorRows | None = None
    if options.short_factors is not None:
        short_rows = _short_rows(options.short_factors, n_pairs)
    elif options.policy != "long-only":
        fallback = given or (existing if source is None else None)
        if fallback is not None and fallback.policy == "switch":
            short_rows = fallback.short_factors

    defaults = given or existing
    original = _first(options.original_max_position_embeddings,
                      defaults.original_max_position_embeddings if defaults else None)
    if original is None:
        if arch.original_required:
            raise InputError(f"{arch.model_type}: the original context has no safe default (config says "
                             f"{geometry.max_position_embeddings}; LongRoPE's Mistral factors assume 4096)",
                             path=config_path, fix="pass --original-max-position-embeddings N")
        original = geometry.original_max_position_embeddings or geometry.max_position_embeddings
    target = _first(options.max_position_embeddings, defaults.max_position_embeddings if defaults else None)
    if target is None:
        raise InputError(f"no target context: the config's max_position_embeddings is the original "
                         f"{geometry.max_position_embeddings}", path=config_path,
                         fix="pass --max-position-embeddings N (the extended context)")
    spec = build_spec(
        rotary_dim=geometry.rotary_dim, rope_theta=geometry.rope_theta, original=int(original), target=int(target),
        long_factors=long_rows, short_factors=short_rows,
        policy=_first(options.policy, given.policy if given and options.short_factors is None else None),
        start_token=int(_first(options.start_token, defaults.start_token if defaults else None, 0)),
        attention_factor=_first(options.attention_factor, defaults.attention_factor if defaults else None),
        source=where,
    )
    if spec.per_layer:
        raise InputError("factors differ between layers; a Hugging Face config holds one vector", path=where,
                         fix="give one factor vector (identical rows collapse), or keep the per-layer spec as JSON")
    notes.extend(spec.warnings())
    if spec.start_token > 0:
        notes.append(f"start-token threshold n_hat={spec.start_token} is stored under config.json's "
                     "'longrope_export' key: stock transformers from_pretrained ignores it; load with "
                     "longrope_export.load_model(path) to honour it")
    if spec.policy == "long-only":
        notes.append("policy long-only: short factors := long factors, so every length runs the long factors")
    else:
        notes.append(f"policy switch: short factors up to {spec.original_max_position_embeddings} positions, "
                     "long factors beyond (transformers decides per forward pass)")
    return spec, arch, base, notes, source


def plan_bake(model_dir: Path, options: BakeOptions) -> BakePlan:
    """Decide everything and check every input before writing anything."""
    from converters.hf_config import baked_config

    model_dir = Path(model_dir)
    spec, arch, base, notes, source = resolve_spec(model_dir, options)
    config, config_notes = baked_config(base, spec, arch, transformers5_only=options.transformers5_only,
                                        sliding_window=options.sliding_window,  # type: ignore[arg-type]
                                        source=str(model_dir / "config.json"))
    notes.extend(config_notes)
    copies, skip_notes = files_to_copy(model_dir)
    notes.extend(skip_notes)
    shards = [path for path in copies if path.suffix == ".safetensors"]
    if not shards and not any(path.suffix in (".bin", ".pt", ".pth") for path in copies):
        raise InputError("no weight files (*.safetensors) in the model folder", path=model_dir,
                         fix="give a checkpoint saved with save_pretrained")
    for shard in shards:
        check_safetensors(shard)
    provenance: dict[str, Any] = {
        "tool": "longrope-export", "tool_version": __version__,
        "base_model": str(model_dir.resolve()),
        "base_config_sha256": sha256_file(model_dir / "config.json"),
        "architecture": arch.model_type, "switch_policy": spec.policy,
        "config_dialect": "transformers5" if options.transformers5_only else arch.dialect,
        "sliding_window": options.sliding_window if arch.has_sliding_window else None,
        "factors": None if source is None else {"path": str(source.path.resolve()), "kind": source.kind,
                                                  "sha256": sha256_file(source.path)},
        "short_factors": None if options.short_factors is None else {
            "path": str(Path(options.short_factors).resolve()), "sha256": sha256_file(Path(options.short_factors))},
    }
    return BakePlan(model_dir, arch, base, spec, config, copies, notes, provenance)


def checkpoint_record(spec: LongRoPESpec, provenance: dict[str, Any]) -> dict[str, Any]:
    """The content of ``longrope.json``: the spec (readable as a spec file) plus provenance."""
    record = spec.to_dict()
    record["provenance"] = provenance
    return record


def bake(model_dir: Path, output: Path, options: BakeOptions,
         on_bytes: Callable[[int], None] | None = None) -> BakeResult:
    """Bake LongRoPE into a copy of ``model_dir`` at ``output``; the input is never modified.

    Example:
        >>> bake(Path("llama"), Path("llama-longrope"),
        ...      BakeOptions(factors=Path("long.csv"), max_position_embeddings=2097152))  # doctest: +SKIP
    """
    plan = plan_bake(Path(model_dir), options)
    files: list[CopiedFile] = []
    with atomic_output_dir(Path(output), options.force, sources=(plan.model_dir,)) as tmp:
        for path in plan.copies:
            files.append(copy_verified(path, tmp / path.name, link=options.link, on_bytes=on_bytes))
        files.append(write_text(tmp, "config.json", json.dumps(plan.config, indent=2, sort_keys=True) + "\n"))
        provenance = dict(plan.provenance, files=[vars(item) for item in files])
        record = checkpoint_record(plan.spec, provenance)
        files.append(write_text(tmp, LONGROPE_JSON, json.dumps(record, indent=2) + "\n"))
    return BakeResult(Path(output), plan.spec, files, plan.notes)
