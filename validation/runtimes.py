"""Candidates for ``validate parity``: one interface over transformers, onnxruntime and llama.cpp.

A candidate reports the spec read back out of the artifact, what its runtime can express (the
start-token threshold, the per-call switch rule), and logits for token ids with a chosen factor set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from longrope_export.errors import InputError
from longrope_export.spec import LongRoPESpec


class Candidate(Protocol):
    runtime: str
    path: Path
    dtype: str
    spec: LongRoPESpec | None
    expresses_start_token: bool
    #: "per-call" (transformers, onnxruntime: max(position_ids)+1 > original) or
    #: "per-context" (llama.cpp: n_ctx > original, fixed for the context)
    switch_rule: str

    def logits(self, ids: np.ndarray, factor_set: str) -> np.ndarray: ...


@dataclass
class TransformersCandidate:
    """A baked checkpoint run through the project's loader (n_hat honoured)."""

    path: Path
    runtime: str = "transformers"
    dtype: str = "fp32"
    expresses_start_token: bool = True
    switch_rule: str = "per-call"
    spec: LongRoPESpec | None = None
    _model: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        from longrope_export.hf_loader import checkpoint_spec

        self.spec = checkpoint_spec(self.path)

    def logits(self, ids: np.ndarray, factor_set: str) -> np.ndarray:
        import torch

        from longrope_export import load_model

        if self._model is None:
            self._model = load_model(self.path, dtype=torch.float32).eval()
        with torch.no_grad():
            return self._model(input_ids=torch.as_tensor(ids)[None]).logits[0].float().numpy()


@dataclass
class OnnxCandidate:
    """An ONNX export run on onnxruntime (CPU; CUDA when onnxruntime-gpu offers it)."""

    path: Path
    runtime: str = "onnxruntime"
    dtype: str = "fp32"
    expresses_start_token: bool = True
    switch_rule: str = "per-call"
    spec: LongRoPESpec | None = None
    _session: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        from converters.onnx_export import read_onnx_spec
        from validation.onnx_runtime import OnnxCausalLM

        self.spec, props = read_onnx_spec(self.path)
        self._session = OnnxCausalLM(self.path)
        self.dtype = "fp16" if self._session.cache_dtype == np.float16 else "fp32"

    def logits(self, ids: np.ndarray, factor_set: str) -> np.ndarray:
        return self._session.logits(ids).astype(np.float32)


def open_candidate(path: Path) -> Candidate:
    """Pick the runtime from the artifact: ``.gguf`` llama.cpp, ``.onnx`` (or a folder with
    model.onnx) onnxruntime, a folder with config.json transformers."""
    path = Path(path)
    if not path.exists():
        raise InputError("candidate not found", path=path, fix="give a baked checkpoint, a .gguf or an ONNX export")
    if path.suffix.lower() == ".gguf":
        from validation.llama_cpp_runtime import GgufCandidate

        return GgufCandidate(path)  # type: ignore[no-any-return]
    if path.suffix.lower() == ".onnx":
        return OnnxCandidate(path)
    if path.is_dir() and (path / "model.onnx").exists():
        return OnnxCandidate(path / "model.onnx")
    if path.is_dir() and (path / "config.json").exists():
        return TransformersCandidate(path)
    raise InputError("not a model this tool can run", path=path,
                     fix="give a baked checkpoint folder, a .gguf file or an ONNX export (folder or model.onnx)")
