"""``inspect model.gguf``: the LongRoPE a GGUF file carries, or none, and whether llama.cpp will run it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .gguf_longrope import GGUFLongRoPE, load_problems, open_reader, read_longrope


def _how_llama_cpp_chooses(info: GGUFLongRoPE) -> list[str]:
    original = info.original_context_length
    if not info.carries_longrope or original is None:
        return []
    notes = [(f"llama.cpp uses the long factors iff the context per sequence (-c / -np, rounded up to 256) "
              f"exceeds {original}: e.g. -c {4 * original} -np 4 selects the SHORT factors")]
    if info.long_factors is not None and info.long_factors == info.short_factors:
        notes.append("long and short factors are equal: every context size runs the same factors")
    if info.start_token:
        notes.append(f"start-token threshold n_hat={info.start_token} is recorded but llama.cpp ignores it")
    return notes


def inspect_gguf(path: Path) -> dict[str, Any]:
    """A JSON-ready description of the GGUF file's LongRoPE (``longrope`` is ``None`` when it carries none)."""
    import gguf

    from longrope_export.errors import InputError

    path = Path(path)
    reader = open_reader(path)
    info = read_longrope(reader, path)
    file_type = reader.get_field(gguf.Keys.General.FILE_TYPE)
    try:
        problems = load_problems(reader)
    except InputError as error:
        problems = [error.message]
    report: dict[str, Any] = {
        "kind": "gguf", "path": str(path), "arch": info.arch,
        "file_type": None if file_type is None else gguf.LlamaFileType(int(file_type.contents())).name,
        "n_tensors": len(reader.tensors), "rotary_dim": info.n_rot, "rope_theta": info.rope_theta,
        "context_length": info.context_length, "rope_scaling_type": info.scaling_type,
        "silent_drop": info.silent_drop, "load_problems": problems, "longrope": None, "warnings": [],
    }
    if info.silent_drop:
        report["warnings"].append("rope.scaling.type is longrope but there are no factor tensors: llama.cpp "
                                  "silently runs plain RoPE (stock convert_hf_to_gguf.py on a Llama LongRoPE "
                                  "config does this); fix: longrope-export gguf-patch IN.gguf --factors ...")
    if info.scaling_factor is not None and info.carries_longrope:
        report["warnings"].append(f"rope.scaling.factor {info.scaling_factor} stacks linear scaling on top of "
                                  "LongRoPE in llama.cpp")
    if info.carries_longrope or info.silent_drop:  # a silent drop still shows what the keys say
        report["longrope"] = {
            "original_context_length": info.original_context_length, "attn_factor": info.attn_factor,
            "start_token": info.start_token, "switch_policy": info.switch_policy,
            "long_factors": None if info.long_factors is None else list(info.long_factors),
            "short_factors": None if info.short_factors is None else list(info.short_factors),
            "factor_tensor_types": info.factor_types, "llama_cpp_selection": _how_llama_cpp_chooses(info),
        }
    return report
