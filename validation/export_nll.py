"""Per-token NLL through the exported artifacts, for perplexity: llama.cpp (GGUF) and onnxruntime (ONNX).

Memory follows the batch, not the window: llama.cpp logits are read batch by batch straight from
its context (``logits_all`` would allocate n_ctx x vocab fp32, 16 GiB at 128k x 32k), and the ONNX
model is fed through its KV cache in segments, except where the factor switch forbids it (a
``switch`` spec past the original context: a segment must see the final length's factor set, so
the window runs in one call).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from longrope_export import rope
from longrope_export.spec import LongRoPESpec

SEGMENT = 512


def _nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    top = logits.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(logits - top).sum(axis=-1)) + top[:, 0]
    return lse - logits[np.arange(len(targets)), targets]


class LlamaCppNll:
    """llama.cpp perplexity runtime: one context per (length, factor set), logits batch by batch."""

    name = "llama.cpp"

    def __init__(self, path: Path, threads: int = 2, batch: int = SEGMENT) -> None:
        from .llama_cpp_runtime import gguf_spec, preflight

        self.path = Path(path)
        self.arch = preflight(self.path)
        self.spec: LongRoPESpec | None = gguf_spec(self.path)[0]
        self.threads, self.batch = threads, batch
        self._models: dict[tuple[int, int | None], Any] = {}

    def factor_set(self, length: int) -> str:
        return "plain" if self.spec is None else rope.factor_set_for(self.spec, length)

    def _model(self, length: int) -> Any:
        import gguf

        from .llama_cpp_runtime import _quiet_stderr, context_for, import_llama

        original = self.spec.original_max_position_embeddings if self.spec else length
        choice = context_for(length, original, "long" if self.factor_set(length) == "long" else "short")
        key = (choice.n_ctx, choice.original_override)
        if key not in self._models:
            overrides = None
            if choice.original_override is not None:
                overrides = {gguf.Keys.Rope.SCALING_ORIG_CTX_LEN.format(arch=self.arch): int(choice.original_override)}
            with _quiet_stderr():
                self._models[key] = import_llama()(
                    model_path=str(self.path), n_ctx=choice.n_ctx, n_batch=self.batch, n_ubatch=self.batch,
                    logits_all=False, type_k=0, type_v=0, flash_attn=False, kv_overrides=overrides,
                    n_threads=self.threads, n_threads_batch=self.threads, verbose=False)
        return self._models[key]

    def token_nll(self, ids: torch.Tensor, score_from: int = 0) -> torch.Tensor:
        tokens = [int(x) for x in ids]
        model = self._model(len(tokens) - 1)
        model._ctx.kv_cache_clear()  # llama-cpp-python 0.3.36 internals: decode batches ourselves
        vocab = model.n_vocab()
        out = []
        for start in range(0, len(tokens) - 1, self.batch):
            segment = tokens[start: min(start + self.batch, len(tokens) - 1)]
            model._batch.set_batch(batch=segment, n_past=start, logits_all=True)
            model._ctx.decode(model._batch)
            logits = np.ctypeslib.as_array(model._ctx.get_logits(), shape=(len(segment) * vocab,))
            targets = np.asarray(tokens[start + 1: start + 1 + len(segment)])
            out.append(_nll(logits.reshape(len(segment), vocab), targets))
        return torch.from_numpy(np.concatenate(out)[score_from:]).float()

    def greedy(self, ids: torch.Tensor, new_tokens: int) -> list[int]:
        """Greedy continuation in one context sized for prompt + new tokens."""
        tokens = [int(x) for x in ids]
        model = self._model(len(tokens) + new_tokens)
        model._ctx.kv_cache_clear()
        vocab, out, n_past = model.n_vocab(), [], 0
        pending = tokens
        for _ in range(new_tokens):
            for start in range(0, len(pending), self.batch):
                segment = pending[start: start + self.batch]
                model._batch.set_batch(batch=segment, n_past=n_past, logits_all=False)  # logits of the last token
                model._ctx.decode(model._batch)
                n_past += len(segment)
            logits = np.ctypeslib.as_array(model._ctx.get_logits(), shape=(vocab,))
            out.append(int(logits.argmax()))
            pending = [out[-1]]
        return out

    def close(self) -> None:
        for model in self._models.values():
            model.close()
        self._models.clear()


class OnnxNll:
    """onnxruntime perplexity runtime over an exported ``model.onnx``."""

    name = "onnxruntime"

    def __init__(self, path: Path) -> None:
        from .onnx_runtime import OnnxCausalLM

        path = Path(path)
        self.session = OnnxCausalLM(path / "model.onnx" if path.is_dir() else path)
        self.spec = None if self.session.spec is None else LongRoPESpec.from_dict(self.session.spec, str(path))

    def factor_set(self, length: int) -> str:
        return "plain" if self.spec is None else rope.factor_set_for(self.spec, length)

    def token_nll(self, ids: torch.Tensor, score_from: int = 0) -> torch.Tensor:
        tokens = ids.numpy().astype(np.int64)
        inputs, targets = tokens[:-1], tokens[1:]
        one_call = (self.spec is not None and self.spec.policy == "switch"
                    and len(inputs) > self.spec.original_max_position_embeddings)
        if one_call:
            nll = _nll(self.session.logits(inputs), targets)
        else:
            past, parts = None, []
            for start in range(0, len(inputs), SEGMENT):
                logits, past = self.session.forward(inputs[None, start: start + SEGMENT], past)
                parts.append(_nll(logits[0], targets[start: start + SEGMENT]))
            nll = np.concatenate(parts)
        return torch.from_numpy(nll[score_from:]).float()

    def greedy(self, ids: torch.Tensor, new_tokens: int) -> list[int]:
        """Greedy continuation; each step runs the whole sequence, so no key rotated with the
        short factors survives a crossing of the switch."""
        seq = [int(x) for x in ids]
        out: list[int] = []
        for _ in range(new_tokens):
            out.append(int(self.session.logits(np.asarray(seq + out, dtype=np.int64))[-1].argmax()))
        return out
