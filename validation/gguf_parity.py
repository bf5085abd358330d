"""``validate gguf``: do llama.cpp's logits on a GGUF file match transformers' on its checkpoint?

Both runtimes see the same token ids; for each length the context size (or the original-length
override) is chosen so llama.cpp uses the factor set transformers' switch picks. The f32 error
grows with position (ggml builds fp32 angles step by step; REFERENCE.md s.3 measured 6.3e-4 at
300 tokens up to 2.3e-2 at 8192 with logit scale ~9), so the tolerance is relative to the logit
scale (max |reference logit|) and grows with length: the llama.cpp f32 entry of
``tolerances.py``, the same bound ``validate parity`` applies. KL and top-1 agreement are gated
too, and every report also shows the error of the wrong factor set and of plain RoPE, which a
working export must beat by orders of magnitude.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from longrope_export import rope
from longrope_export.spec import LongRoPESpec

from .parity import ReferenceRunner, kl_and_top1
from .tolerances import tolerance_for

F32 = tolerance_for("llama.cpp", "f32")


def tolerance(logit_scale: float, n_tokens: int) -> float:
    """Allowed max abs logit error for an f32 file at ``n_tokens`` positions."""
    return F32.max_abs(logit_scale, n_tokens)


def compare_logits(reference: Any, got: Any) -> dict[str, float]:
    """Max abs error, logit scale, mean KL(reference || got) and top-1 agreement of two logit arrays."""
    import numpy as np

    ref = np.asarray(reference, dtype=np.float64)
    out = np.asarray(got, dtype=np.float64)
    kl, top1 = kl_and_top1(ref, out)
    return {"max_abs_error": float(np.abs(ref - out).max()), "logit_scale": float(np.abs(ref).max()),
            "mean_kl": kl, "top1_agreement": top1}


def token_ids(n_tokens: int, vocab_size: int) -> list[int]:
    """Deterministic ids spread over the vocabulary."""
    return [(index * 7919 + 13) % vocab_size for index in range(n_tokens)]


def _plain_spec(spec: LongRoPESpec) -> LongRoPESpec:
    ones = ((1.0,) * spec.n_pairs,)
    return spec.replace(long_factors=ones, short_factors=ones, policy="long-only", start_token=0,
                        attention_factor=1.0)


def _file_type(path: Path) -> str:
    import gguf

    from converters.gguf_longrope import field_value, open_reader

    value = field_value(open_reader(path), gguf.Keys.General.FILE_TYPE)
    return "unknown" if value is None else gguf.LlamaFileType(int(value)).name


def _length_report(gguf_path: Path, runner: ReferenceRunner, spec: LongRoPESpec, n_tokens: int, gated: bool,
                   isolate: bool) -> dict[str, Any]:
    from .llama_cpp_runtime import context_for, llama_cpp_logits

    ids = token_ids(n_tokens, runner.vocab)
    which = rope.factor_set_for(spec, n_tokens)
    runtime_spec = spec.replace(start_token=0)  # llama.cpp has no start-token threshold
    reference = runner.logits(runtime_spec, np.asarray(ids))
    choice = context_for(n_tokens, spec.original_max_position_embeddings, which)
    result: dict[str, Any] = {"n_tokens": n_tokens, "factor_set": which, "n_ctx": choice.n_ctx,
                              "original_override": choice.original_override,
                              **compare_logits(reference, llama_cpp_logits(gguf_path, ids, choice, isolate=isolate))}
    result["tolerance"] = tolerance(result["logit_scale"], n_tokens)
    plain = runner.logits(_plain_spec(spec), np.asarray(ids))
    result["plain_rope_error"] = compare_logits(reference, plain)["max_abs_error"]
    if spec.policy == "switch":
        other = "short" if which == "long" else "long"
        wrong = context_for(n_tokens, spec.original_max_position_embeddings, other)
        if other == "short" and wrong.original_override is None:
            wrong = type(wrong)(wrong.n_ctx, wrong.n_ctx, other)
        result["wrong_factor_set_error"] = compare_logits(
            reference, llama_cpp_logits(gguf_path, ids, wrong, isolate=isolate))["max_abs_error"]
    if spec.start_token > 0:
        with_n_hat = runner.logits(spec, np.asarray(ids))
        result["start_token_effect"] = compare_logits(reference, with_n_hat)["max_abs_error"]
    result["passed"] = (not gated) or (result["max_abs_error"] <= result["tolerance"]
                                       and result["mean_kl"] <= F32.max_kl and result["top1_agreement"] >= F32.min_top1)
    return result


def gguf_parity(gguf_path: Path, checkpoint: Path, lengths: tuple[int, ...] = (64, 300),
                isolate: bool = False) -> dict[str, Any]:
    """The parity report of ``gguf_path`` against the baked checkpoint it came from.

    Only f32 files are gated; f16/bf16/q8_0 report error, KL and top-1 without a verdict.
    ``isolate`` runs llama.cpp in a child process (a crash becomes exit 3, not the caller's death).

    Example:
        >>> report = gguf_parity(Path("phi3.gguf"), Path("phi3-longrope"))  # doctest: +SKIP
        >>> report["passed"]  # doctest: +SKIP
        True
    """
    import torch

    from longrope_export.hf_loader import checkpoint_spec

    from .llama_cpp_runtime import preflight

    gguf_path, checkpoint = Path(gguf_path), Path(checkpoint)
    preflight(gguf_path)
    spec = checkpoint_spec(checkpoint)
    file_type = _file_type(gguf_path)
    gated = file_type == "ALL_F32"
    torch.set_flush_denormal(True)
    runner = ReferenceRunner(checkpoint)
    results = [_length_report(gguf_path, runner, spec, n, gated, isolate) for n in lengths]
    return {"gguf": str(gguf_path), "checkpoint": str(checkpoint), "file_type": file_type, "gated": gated,
            "policy": spec.policy, "original_context": spec.original_max_position_embeddings,
            "tolerance_rule": f"max({F32.floor}, {F32.rel} * logit_scale, {F32.per_position} * logit_scale * "
                              f"n_tokens); mean KL <= {F32.max_kl}; top-1 >= {F32.min_top1}",
            "lengths": results, "passed": all(item["passed"] for item in results)}
