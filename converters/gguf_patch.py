"""``gguf-patch``: add or replace LongRoPE in an existing GGUF file (f32 or quantized).

Every other key and tensor is copied unchanged -- quantized blocks byte for byte, strings as raw
bytes -- one tensor at a time from the memory-mapped input, so peak memory stays near the largest
tensor. The input is never modified; the output is a temporary file renamed at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longrope_export.errors import InputError
from longrope_export.sources import read_factor_source
from longrope_export.spec import LongRoPESpec, build_spec, check_factor_rows, collapse_rows

from .gguf_longrope import (
    NEEDS_SCALING_TYPE,
    add_longrope_keys,
    arch_of,
    factor_arrays,
    factor_tensor_names,
    field_value,
    model_arch,
    open_reader,
    owned_keys,
    rope_freqs_name,
    selection_notes,
)

if TYPE_CHECKING:
    import gguf

    from longrope_export.bake import BakeOptions


@dataclass
class PatchResult:
    """What gguf-patch wrote."""

    output: Path
    spec: LongRoPESpec
    replaced_keys: list[str]
    dropped_tensors: list[str]
    notes: list[str] = field(default_factory=list)


def _first(*values: Any) -> Any:
    return next((value for value in values if value is not None), None)


def patch_spec(reader: gguf.GGUFReader, path: Path, options: BakeOptions) -> LongRoPESpec:
    """The spec to write: factors from ``options.factors``, geometry from the GGUF file, contexts from
    the options, then the factor source, then the file (its context length is the original)."""
    import gguf

    arch = arch_of(reader, path)
    n_rot = field_value(reader, gguf.Keys.Rope.DIMENSION_COUNT.format(arch=arch))
    theta = field_value(reader, gguf.Keys.Rope.FREQ_BASE.format(arch=arch)) or 10000.0
    if n_rot is None:
        raise InputError(f"no {arch}.rope.dimension_count key", path=path, fix="give a model GGUF file")
    if options.factors is None:
        raise InputError("gguf-patch needs --factors", fix="pass --factors FILE (CSV, JSON spec or config.json)")
    source = read_factor_source(options.factors)
    given = source.spec
    if given is not None and given.rotary_dim != int(n_rot):
        raise InputError(f"spec is for rotary dim {given.rotary_dim} but the GGUF has {n_rot}", path=options.factors,
                         fix="use factors searched for this model")
    check_factor_rows(source.long_factors, int(n_rot) // 2, str(options.factors), "long")
    short_rows = None
    if options.short_factors is not None:
        short_rows = collapse_rows(read_factor_source(options.short_factors).long_factors)
    elif given is not None and given.policy == "switch" and options.policy != "long-only":
        short_rows = given.short_factors
    existing_original = field_value(reader, gguf.Keys.Rope.SCALING_ORIG_CTX_LEN.format(arch=arch))
    context = field_value(reader, gguf.Keys.LLM.CONTEXT_LENGTH.format(arch=arch))
    original = _first(options.original_max_position_embeddings,
                      given.original_max_position_embeddings if given else None, existing_original, context)
    target = _first(options.max_position_embeddings, given.max_position_embeddings if given else None)
    if original is None or target is None:
        raise InputError("the target context is unknown", path=options.factors,
                         fix="pass --max-position-embeddings N (and --original-max-position-embeddings N0)")
    return build_spec(
        rotary_dim=int(n_rot), rope_theta=float(theta), original=int(original), target=int(target),
        long_factors=source.long_factors, short_factors=short_rows,
        policy=_first(options.policy, given.policy if given and options.short_factors is None else None),
        start_token=int(_first(options.start_token, given.start_token if given else None, 0)),
        attention_factor=_first(options.attention_factor, given.attention_factor if given else None),
        source=str(options.factors))


def raw_value(reader_field: Any) -> Any:
    """A key's value as ``add_key_value`` re-encodes it to the same bytes (strings stay raw bytes)."""
    import gguf

    types = reader_field.types
    if types[0] == gguf.GGUFValueType.STRING:
        return bytes(reader_field.parts[reader_field.data[0]])
    if types[0] == gguf.GGUFValueType.ARRAY and len(types) == 2 and types[1] == gguf.GGUFValueType.STRING:
        return [bytes(reader_field.parts[index]) for index in reader_field.data]
    return reader_field.contents()


def _copy_keys(reader: gguf.GGUFReader, writer: gguf.GGUFWriter, skip: set[str]) -> list[str]:
    import gguf

    replaced = []
    for item in reader.fields.values():
        if item.name.startswith("GGUF.") or item.name == gguf.Keys.General.ARCHITECTURE:
            continue
        if item.name in skip:
            replaced.append(item.name)
            continue
        if item.name == gguf.Keys.General.ALIGNMENT:
            writer.data_alignment = int(item.contents())
        sub_type = item.types[-1] if item.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(item.name, raw_value(item), item.types[0], sub_type=sub_type)
    return replaced


@dataclass
class ShardEdit:
    """What changes in one output file."""

    drop: set[str]
    skip_keys: set[str] = field(default_factory=set)
    spec: LongRoPESpec | None = None  # write the LongRoPE keys
    factors: dict[str, Any] = field(default_factory=dict)  # factor tensors to append
    set_keys: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # key -> (value, GGUFValueType)


def _write_shard(reader: gguf.GGUFReader, target: Path, arch: str, edit: ShardEdit,
                 on_bytes: Callable[[int], None] | None) -> list[str]:
    """Write one file: ``reader``'s keys and tensors with ``edit`` applied, tensors streamed from the memory
    map. Returns the keys that were replaced."""
    import gguf

    writer = gguf.GGUFWriter(target, arch)
    if reader.get_field(gguf.Keys.General.ARCHITECTURE) is None:  # later split files carry no architecture
        writer.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE, None)
    try:
        replaced = _copy_keys(reader, writer, edit.skip_keys)
        if edit.spec is not None:
            add_longrope_keys(writer, edit.spec, arch)
        for key, (value, vtype) in edit.set_keys.items():
            writer.add_key_value(key, value, vtype)
        kept = [tensor for tensor in reader.tensors if tensor.name not in edit.drop]
        factors = edit.factors
        for tensor in kept:
            writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes,
                                   tensor.tensor_type)
        for name, array in factors.items():
            writer.add_tensor_info(name, array.shape, array.dtype, array.nbytes)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor in kept:
            writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
            if on_bytes is not None:
                on_bytes(int(tensor.n_bytes))
        for array in factors.values():
            writer.write_tensor_data(array)
    finally:
        writer.close()
    return replaced


def _drop_set(arch: str) -> set[str]:
    drop = set(factor_tensor_names())
    if arch in NEEDS_SCALING_TYPE:
        drop.add(rope_freqs_name())  # arch llama with longrope loads long/short instead
    return drop


def _notes(spec: LongRoPESpec, reader: gguf.GGUFReader, arch: str, dropped: list[str], count: int) -> list[str]:
    import gguf

    notes = selection_notes(spec)
    if rope_freqs_name() in dropped:
        notes.append(f"removed {rope_freqs_name()}: with rope.scaling.type longrope, llama.cpp's arch {arch} loads "
                     "the long/short factor tensors instead (and refuses a file with both)")
    if field_value(reader, gguf.Keys.Rope.SCALING_FACTOR.format(arch=arch)) is not None:
        notes.append("removed rope.scaling.factor: llama.cpp would stack linear scaling on top of LongRoPE")
    if count > 1:
        notes.append(f"split model: the first file is rewritten; of the other {count - 1} file(s), those without "
                     "LongRoPE tensors are copied byte for byte")
    return notes


def patch_gguf(input_path: Path, output: Path, options: BakeOptions,
               on_bytes: Callable[[int], None] | None = None) -> PatchResult:
    """Write ``output``: ``input_path`` with LongRoPE added or replaced (``on_bytes``: progress per tensor).

    A split model is given by its first file (``NAME-00001-of-0000N.gguf``) and written under the same
    naming scheme (``-o OUT-00001-of-0000N.gguf``).

    Example:
        >>> patch_gguf(Path("phi3-q8_0.gguf"), Path("phi3-long.gguf"),
        ...            BakeOptions(factors=Path("phi3.5.config.json")))  # doctest: +SKIP
    """
    import gguf

    from longrope_export.checkpoint import copy_verified

    from .gguf_split import atomic_files, split_inputs, split_outputs

    input_path = Path(input_path)
    reader = open_reader(input_path)
    shards = split_inputs(reader, input_path)
    arch = arch_of(reader, input_path)
    model_arch(arch, input_path)
    outputs = split_outputs(Path(output), len(shards), options.force, tuple(path for path, _ in shards))
    spec = patch_spec(reader, input_path, options)
    factors = factor_arrays(spec)
    drop = _drop_set(arch)
    dropped = [t.name for _, shard in shards for t in shard.tensors if t.name in drop]
    first = ShardEdit(drop, owned_keys(arch), spec, factors)
    if len(shards) > 1:
        count_key = gguf.Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT
        total = sum(len(shard.tensors) for _, shard in shards) - len(dropped) + len(factors)
        count_field = reader.get_field(count_key)
        vtype = gguf.GGUFValueType.INT32 if count_field is None else count_field.types[0]
        first.set_keys[count_key] = (total, vtype)
        first.skip_keys.add(count_key)
    with atomic_files(outputs) as temps:
        replaced = _write_shard(reader, temps[0], arch, first, on_bytes)
        for (path, shard), temp in zip(shards[1:], temps[1:], strict=True):
            if any(tensor.name in drop for tensor in shard.tensors):
                _write_shard(shard, temp, arch, ShardEdit(drop), on_bytes)
            else:
                copy_verified(path, temp, on_bytes=on_bytes)
    return PatchResult(outputs[0], spec, replaced, dropped, _notes(spec, reader, arch, dropped, len(shards)))
