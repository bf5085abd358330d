"""llama.cpp as a runtime (through llama-cpp-python, pinned in the ``[gguf]`` extra).

llama.cpp aborts the whole process on some malformed files (an f16 factor tensor: SIGABRT), so
every file is checked with gguf-py before it is handed to llama.cpp: a bad file raises
:class:`InputError` (exit 2), a file llama.cpp still refuses raises :class:`RuntimeUnavailable`
(exit 3); neither crashes the caller.

The factor set is llama.cpp's choice, not the prompt's: long factors iff the context per sequence
exceeds ``original_context_length`` (REFERENCE.md s.3). :func:`context_for` picks an ``n_ctx`` (and,
when no context size can express the choice, an override of the original length) that selects a
given set.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longrope_export.errors import InputError, RuntimeUnavailable

#: llama.cpp rounds the context size up to a multiple of this.
N_CTX_PAD = 256


def preflight(path: Path) -> str:
    """Check ``path`` the way llama.cpp would, without llama.cpp; returns the GGUF arch name."""
    from converters.gguf_longrope import arch_of, load_problems, open_reader

    reader = open_reader(Path(path))
    problems = load_problems(reader)
    if problems:
        raise InputError("llama.cpp cannot load this file: " + "; ".join(problems), path=path,
                         fix="re-create it with longrope-export convert --to gguf or gguf-patch")
    return arch_of(reader, path)


def import_llama() -> Any:
    """The ``llama_cpp.Llama`` class, or a clear error when llama-cpp-python is missing."""
    try:
        from llama_cpp import Llama
    except ImportError as error:
        raise RuntimeUnavailable(f"llama-cpp-python is not importable ({error})",
                                 fix="pip install 'longrope-export[gguf]' (compiles llama.cpp, ~5 minutes)") from None
    return Llama


@dataclass(frozen=True)
class ContextChoice:
    """An ``n_ctx`` and optional original-length override that make llama.cpp use ``factor_set``."""

    n_ctx: int
    original_override: int | None
    factor_set: str


def _round_up(value: int) -> int:
    return -(-value // N_CTX_PAD) * N_CTX_PAD


def context_for(n_tokens: int, original: int, factor_set: str) -> ContextChoice:
    """The smallest context that holds ``n_tokens`` and selects ``factor_set`` (``long`` / ``short``)."""
    if factor_set == "long":
        n_ctx = _round_up(max(n_tokens, original + 1))
        return ContextChoice(n_ctx, None, "long")
    n_ctx = _round_up(n_tokens)
    return ContextChoice(n_ctx, None if n_ctx <= original else n_ctx, "short")


@contextlib.contextmanager
def _quiet_stderr() -> Any:
    """llama.cpp logs to fd 2 from C; keep the caller's stderr clean."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def llama_cpp_logits(path: Path, ids: list[int], choice: ContextChoice, threads: int = 2,
                     isolate: bool = False) -> Any:
    """fp32 logits (``len(ids) x vocab`` numpy array) of one forward pass of ``ids`` through llama.cpp.

    The file is checked first (:func:`preflight`); ``isolate=True`` also runs llama.cpp in a child
    process, so even a crash nobody foresaw becomes a :class:`RuntimeUnavailable` (exit 3).
    """
    arch = preflight(path)
    if len(ids) > choice.n_ctx:
        raise InputError(f"{len(ids)} tokens do not fit n_ctx {choice.n_ctx}", fix="use a larger n_ctx")
    if isolate:
        return _logits_in_child(Path(path), ids, choice, threads)
    return _logits_in_process(Path(path), arch, ids, choice, threads)


def _logits_in_process(path: Path, arch: str, ids: list[int], choice: ContextChoice, threads: int) -> Any:
    import gguf
    import numpy as np

    Llama = import_llama()
    overrides = None
    if choice.original_override is not None:
        overrides = {gguf.Keys.Rope.SCALING_ORIG_CTX_LEN.format(arch=arch): int(choice.original_override)}
    try:
        with _quiet_stderr():
            model = Llama(model_path=str(path), n_ctx=choice.n_ctx, n_batch=choice.n_ctx, n_ubatch=choice.n_ctx,
                          logits_all=True, type_k=0, type_v=0, flash_attn=False, kv_overrides=overrides,
                          n_threads=threads, n_threads_batch=threads, verbose=False)
    except (ValueError, RuntimeError) as error:
        raise RuntimeUnavailable(f"llama.cpp refused the file ({error})", path=path,
                                 fix="check the file with: longrope-export inspect FILE.gguf") from None
    try:
        with _quiet_stderr():
            model.eval(list(ids))
        return np.array(model.scores[: len(ids)], dtype=np.float32)
    finally:
        model.close()


def _logits_in_child(path: Path, ids: list[int], choice: ContextChoice, threads: int) -> Any:
    import numpy as np

    import_llama()  # a missing package is reported here, not as a crash of the child
    with tempfile.TemporaryDirectory(prefix="longrope-llama-cpp-") as tmp:
        ids_file, out_file = Path(tmp) / "ids.npy", Path(tmp) / "logits.npy"
        np.save(ids_file, np.asarray(ids, dtype=np.int64))
        override = "" if choice.original_override is None else str(choice.original_override)
        done = subprocess.run([sys.executable, "-m", __name__, str(path), str(choice.n_ctx), override, str(threads),
                               str(ids_file), str(out_file)], check=False, capture_output=True, text=True)
        if done.returncode != 0 or not out_file.exists():
            code = done.returncode
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            tail = " ".join(done.stderr.split()[-40:])
            raise RuntimeUnavailable(f"llama.cpp crashed on the file ({how}): {tail}", path=path,
                                     fix="check the file with: longrope-export inspect FILE.gguf")
        return np.load(out_file)


#: ``general.file_type`` -> the dtype names of ``--outtype`` and ``validation.tolerances``.
FILE_TYPES = {"ALL_F32": "f32", "MOSTLY_F16": "f16", "MOSTLY_BF16": "bf16", "MOSTLY_Q8_0": "q8_0"}


def gguf_spec(path: Path) -> tuple[Any, str]:
    """The :class:`LongRoPESpec` a GGUF file carries (``None`` without factor tensors) and its dtype name."""
    import gguf

    from converters.gguf_longrope import field_value, open_reader, read_longrope
    from longrope_export.spec import LongRoPESpec

    reader = open_reader(Path(path))
    info = read_longrope(reader, path)
    file_type = field_value(reader, gguf.Keys.General.FILE_TYPE)
    name = "unknown" if file_type is None else gguf.LlamaFileType(int(file_type)).name
    dtype = FILE_TYPES.get(name, name.lower())
    if info.long_factors is None or info.short_factors is None or info.n_rot is None:
        return None, dtype
    long_rows, short_rows = (info.long_factors,), (info.short_factors,)
    original = info.original_context_length or info.context_length
    spec = LongRoPESpec(
        rotary_dim=int(info.n_rot), rope_theta=float(info.rope_theta or 10000.0),
        original_max_position_embeddings=int(original or 0), max_position_embeddings=int(info.context_length or 0),
        long_factors=long_rows, short_factors=short_rows,
        policy=info.switch_policy or ("long-only" if long_rows == short_rows else "switch"),  # type: ignore[arg-type]
        start_token=int(info.start_token or 0),
        attention_factor=None if info.attn_factor is None else float(info.attn_factor), source=str(path))
    return spec, dtype


@dataclass
class GgufCandidate:
    """A GGUF file run on llama.cpp, for ``validate parity`` (``validation.runtimes.Candidate``).

    llama.cpp cannot express n_hat and picks the factor set once per context: :meth:`logits` runs
    each call with a context (or original-length override) that selects the requested set.
    """

    path: Path
    runtime: str = "llama.cpp"
    dtype: str = "f32"
    spec: Any = None
    expresses_start_token: bool = False
    switch_rule: str = "per-context"
    isolate: bool = True

    def __post_init__(self) -> None:
        preflight(self.path)
        self.spec, self.dtype = gguf_spec(self.path)

    def logits(self, ids: Any, factor_set: str) -> Any:
        original = self.spec.original_max_position_embeddings if self.spec is not None else N_CTX_PAD
        choice = context_for(len(ids), original, "long" if factor_set == "long" else "short")
        return llama_cpp_logits(self.path, [int(x) for x in ids], choice, isolate=self.isolate)


def _child_main(argv: list[str]) -> None:
    """``python -m validation.llama_cpp_runtime PATH N_CTX OVERRIDE THREADS IDS.npy OUT.npy``."""
    import numpy as np

    from converters.gguf_longrope import arch_of, open_reader

    path, n_ctx, override, threads, ids_file, out_file = argv
    choice = ContextChoice(int(n_ctx), int(override) if override else None, "")
    ids = [int(x) for x in np.load(ids_file)]
    logits = _logits_in_process(Path(path), arch_of(open_reader(Path(path)), path), ids, choice, int(threads))
    np.save(out_file, logits)


if __name__ == "__main__":
    _child_main(sys.argv[1:])
