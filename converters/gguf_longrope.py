"""What LongRoPE looks like inside a GGUF file (REFERENCE.md s.3), shared by convert, gguf-patch,
inspect and the llama.cpp runtime: the keys and factor tensors to write, reading them back, and
the checks that keep llama.cpp from aborting the process on a malformed file.

Every key string comes from ``gguf.Keys``; every tensor name from ``gguf.TENSOR_NAMES``. The two
``longrope.*`` keys are this project's own: GGUF has no field for them and llama.cpp ignores them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longrope_export import rope
from longrope_export.errors import InputError, RuntimeUnavailable
from longrope_export.registry import ARCHITECTURES
from longrope_export.spec import LongRoPESpec

if TYPE_CHECKING:
    import gguf
    import numpy as np

#: The start-token threshold n_hat (llama.cpp has none and ignores this key).
START_TOKEN_KEY = "longrope.start_token"
#: ``long-only`` or ``switch``: what the exporter meant; llama.cpp switches by context size regardless.
SWITCH_POLICY_KEY = "longrope.switch_policy"
#: GGUF architectures (llama.cpp's behaviour, not a model family's) that load the long/short factor
#: tensors only with ``rope.scaling.type = longrope`` (llama.cpp PR #10559); phi3 always loads them.
NEEDS_SCALING_TYPE = ("llama",)
#: The GGUF architectures the registry's model families convert to.
SUPPORTED_ARCHS = tuple(sorted({arch.gguf_arch for arch in ARCHITECTURES.values() if arch.gguf_arch}))


def require_gguf() -> None:
    """A clear exit-3 error when the ``gguf`` package (the ``[gguf]`` extra) is missing."""
    try:
        import gguf  # noqa: F401
    except ImportError as error:
        raise RuntimeUnavailable(f"the gguf package is not importable ({error})",
                                 fix="pip install 'longrope-export[gguf]'") from None


def model_arch(arch_name: str, where: object = None) -> gguf.MODEL_ARCH:
    """The ``gguf.MODEL_ARCH`` for a GGUF architecture name, refusing the ones LongRoPE cannot go into."""
    import gguf

    if arch_name not in SUPPORTED_ARCHS:
        raise InputError(f"GGUF architecture {arch_name!r} cannot carry LongRoPE here", path=where,
                         fix=f"supported GGUF architectures: {', '.join(SUPPORTED_ARCHS)}")
    return next(arch for arch, name in gguf.MODEL_ARCH_NAMES.items() if name == arch_name)


def factor_tensor_names() -> tuple[str, str]:
    """``(long, short)`` tensor names: ``rope_factors_long.weight``, ``rope_factors_short.weight``."""
    import gguf

    return (gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FACTORS_LONG] + ".weight",
            gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT] + ".weight")


def rope_freqs_name() -> str:
    import gguf

    return gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"


def owned_keys(arch_name: str) -> set[str]:
    """Keys LongRoPE owns in a file of ``arch_name``: gguf-patch replaces exactly these."""
    import gguf

    rope_keys = gguf.Keys.Rope
    keys = {rope_keys.SCALING_TYPE, rope_keys.SCALING_FACTOR, rope_keys.SCALING_ATTN_FACTOR,
            rope_keys.SCALING_ORIG_CTX_LEN, gguf.Keys.LLM.CONTEXT_LENGTH}
    return {key.format(arch=arch_name) for key in keys} | {START_TOKEN_KEY, SWITCH_POLICY_KEY}


def factor_arrays(spec: LongRoPESpec) -> dict[str, np.ndarray]:
    """The two f32 factor tensors; a ``long-only`` spec writes short := long, so llama.cpp's
    context-size rule cannot pick a set nobody meant. Differing per-layer rows raise."""
    import numpy as np

    if spec.per_layer:
        raise InputError("factors differ between layers; GGUF holds one global factor vector", path=spec.source,
                         fix="give one factor vector (identical rows collapse)")
    long_name, short_name = factor_tensor_names()
    short = spec.factors("long") if spec.policy == "long-only" else spec.factors("short")
    return {long_name: np.asarray(spec.factors("long"), dtype=np.float32),
            short_name: np.asarray(short, dtype=np.float32)}


def add_longrope_keys(writer: gguf.GGUFWriter, spec: LongRoPESpec, arch_name: str) -> None:
    """Write the LongRoPE keys with their exact types (never ``rope.scaling.factor``)."""
    import gguf

    if arch_name in NEEDS_SCALING_TYPE:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
    writer.add_context_length(spec.max_position_embeddings)
    writer.add_rope_scaling_orig_ctx_len(spec.original_max_position_embeddings)
    # llama.cpp never computes the attention factor (default 1.0): it must be in the file.
    writer.add_rope_scaling_attn_factors(rope.attention_factor(spec))
    writer.add_uint32(START_TOKEN_KEY, spec.start_token)
    writer.add_string(SWITCH_POLICY_KEY, spec.policy)


def selection_notes(spec: LongRoPESpec) -> list[str]:
    """How llama.cpp will choose the factor set, and what it ignores."""
    original = spec.original_max_position_embeddings
    notes = [(f"llama.cpp picks the long factors iff the context per sequence (n_ctx / -np, rounded up to 256) "
              f"exceeds the original {original}; chosen once per context, not per prompt: e.g. "
              f"-c {4 * original} -np 4 gives {original} per sequence and selects the SHORT factors")]
    if spec.policy == "long-only":
        notes.append("policy long-only: short factors := long factors, so every context size runs the long factors")
    else:
        notes.append("policy switch: unlike transformers (per forward pass), llama.cpp decides by context size: "
                     f"run with -c > {original} for prompts longer than {original} tokens")
    if spec.start_token > 0:
        notes.append(f"llama.cpp ignores the start-token threshold n_hat={spec.start_token} (stored under "
                     f"{START_TOKEN_KEY!r}): positions below it get the factors and attention factor too")
    return notes


@dataclass(frozen=True)
class GGUFLongRoPE:
    """What a GGUF file carries (``None`` fields: absent)."""

    arch: str
    n_rot: int | None
    rope_theta: float | None
    context_length: int | None
    original_context_length: int | None
    attn_factor: float | None
    scaling_type: str | None
    scaling_factor: float | None
    start_token: int | None
    switch_policy: str | None
    long_factors: tuple[float, ...] | None
    short_factors: tuple[float, ...] | None
    factor_types: dict[str, str]

    @property
    def carries_longrope(self) -> bool:
        return self.long_factors is not None or self.short_factors is not None

    @property
    def silent_drop(self) -> bool:
        """``rope.scaling.type = longrope`` without factor tensors: llama.cpp runs plain RoPE."""
        return self.scaling_type == "longrope" and not self.carries_longrope


def open_reader(path: Path) -> gguf.GGUFReader:
    """A ``GGUFReader`` whose failures (truncated, corrupt, not GGUF) become a clear :class:`InputError`."""
    require_gguf()
    import gguf

    path = Path(path)
    if not path.is_file():
        raise InputError("GGUF file not found", path=path, fix="check the path")
    fix = "the file is truncated or corrupt (or not GGUF): download or convert it again"
    try:
        reader = gguf.GGUFReader(path, "r")
    except (ValueError, IndexError, KeyError, OSError, OverflowError, UnicodeDecodeError, TypeError,
            struct.error) as error:
        raise InputError(f"cannot read GGUF ({type(error).__name__}: {error})", path=path, fix=fix) from None
    size = path.stat().st_size
    for tensor in reader.tensors:
        end = int(tensor.data_offset) + int(tensor.n_bytes)
        if end > size:
            raise InputError(f"tensor {tensor.name} ends at byte {end} but the file has {size}", path=path, fix=fix)
    return reader


def field_value(reader: gguf.GGUFReader, key: str) -> Any:
    field = reader.get_field(key)
    return None if field is None else field.contents()


def arch_of(reader: gguf.GGUFReader, path: object) -> str:
    import gguf

    arch = field_value(reader, gguf.Keys.General.ARCHITECTURE)
    if not isinstance(arch, str):
        raise InputError("GGUF file has no general.architecture", path=path, fix="give a model GGUF file")
    return arch


def read_longrope(reader: gguf.GGUFReader, path: object) -> GGUFLongRoPE:
    """The LongRoPE-related keys and tensors of an open GGUF file."""
    import gguf

    arch = arch_of(reader, path)

    def key(template: str) -> Any:
        return field_value(reader, template.format(arch=arch))

    tensors = {tensor.name: tensor for tensor in reader.tensors}
    long_name, short_name = factor_tensor_names()
    factors = {name: tuple(float(x) for x in tensors[name].data.reshape(-1)) if name in tensors
               and tensors[name].tensor_type == gguf.GGMLQuantizationType.F32 else None
               for name in (long_name, short_name)}
    return GGUFLongRoPE(
        arch=arch, n_rot=key(gguf.Keys.Rope.DIMENSION_COUNT), rope_theta=key(gguf.Keys.Rope.FREQ_BASE),
        context_length=key(gguf.Keys.LLM.CONTEXT_LENGTH),
        original_context_length=key(gguf.Keys.Rope.SCALING_ORIG_CTX_LEN),
        attn_factor=key(gguf.Keys.Rope.SCALING_ATTN_FACTOR), scaling_type=key(gguf.Keys.Rope.SCALING_TYPE),
        scaling_factor=key(gguf.Keys.Rope.SCALING_FACTOR), start_token=field_value(reader, START_TOKEN_KEY),
        switch_policy=field_value(reader, SWITCH_POLICY_KEY),
        long_factors=factors[long_name], short_factors=factors[short_name],
        factor_types={name: tensors[name].tensor_type.name for name in (long_name, short_name) if name in tensors},
    )


def load_problems(reader: gguf.GGUFReader) -> list[str]:
    """Problems that make llama.cpp abort the process or refuse the file (checked before loading)."""
    import gguf

    problems: list[str] = []
    arch = arch_of(reader, None)
    n_rot = field_value(reader, gguf.Keys.Rope.DIMENSION_COUNT.format(arch=arch))
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    present = [name for name in (*factor_tensor_names(), rope_freqs_name()) if name in tensors]
    for name in present:
        tensor = tensors[name]
        if tensor.tensor_type != gguf.GGMLQuantizationType.F32:
            problems.append(f"{name} is {tensor.tensor_type.name}; llama.cpp aborts the process unless it is F32")
        shape = [int(x) for x in tensor.shape]
        if n_rot is not None and shape != [int(n_rot) // 2]:
            problems.append(f"{name} has shape {shape}; llama.cpp needs [{int(n_rot) // 2}] (n_rot/2)")
    factor_names = [name for name in factor_tensor_names() if name in tensors]
    if arch in NEEDS_SCALING_TYPE and factor_names:
        scaling = field_value(reader, gguf.Keys.Rope.SCALING_TYPE.format(arch=arch))
        if scaling != "longrope":
            problems.append(f"arch {arch} has {', '.join(factor_names)} but rope.scaling.type is {scaling!r}: "
                            "llama.cpp fails with 'wrong number of tensors'")
        if len(factor_names) == 1:
            problems.append(f"only {factor_names[0]} present: llama.cpp needs both long and short factors")
    return problems
