"""Run an exported ``model.onnx`` on onnxruntime: logits for token ids, with optional KV-cache decoding.

Providers: ``CPUExecutionProvider`` (tested); ``CUDAExecutionProvider`` is chosen when the installed
onnxruntime offers it (``onnxruntime-gpu``). The CUDA path is written to the provider API and is
UNTESTED until a GPU run says otherwise: :attr:`OnnxCausalLM.provider_note` says so.

The runner honours the exported ``longrope.kv_policy``: with ``recompute`` (the default), the call
that first reaches past the original context drops the cache and runs the whole sequence again,
so no key rotated with the short factors survives into the long regime (transformers' Phi-3
``generate`` does the same). With ``keep`` the short-rotated keys stay (what transformers'
Llama/Mistral and onnxruntime-genai outside its hard-wired 4097 do).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from longrope_export.errors import InputError, RuntimeUnavailable

CUDA_NOTE = "CUDAExecutionProvider: written to the provider API, untested here (no GPU run yet)"


def choose_providers(prefer: str | None = None) -> list[str]:
    """CUDA first when available (``prefer='cpu'`` forces CPU), CPU always as the fallback."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if prefer != "cpu" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


@dataclass
class DecodeResult:
    """Logits of every position of ``ids`` as produced step by step, and what happened at the switch."""

    logits: np.ndarray  # (len(ids), vocab), fp32
    recomputed_at: list[int]  # sequence lengths at which the cache was dropped and rebuilt


class OnnxCausalLM:
    """An onnxruntime session over a ``longrope-export`` ONNX causal LM."""

    def __init__(self, path: Path, prefer: str | None = None, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as error:
            raise RuntimeUnavailable("onnxruntime is not installed", fix="pip install 'longrope-export[onnx]'") \
                from error
        path = Path(path)
        if not path.exists():
            raise InputError("ONNX model not found", path=path, fix="export it with convert --to onnx")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=choose_providers(prefer))
        self.provider = self.session.get_providers()[0]
        self.provider_note = CUDA_NOTE if self.provider == "CUDAExecutionProvider" else "CPUExecutionProvider"
        meta = self.session.get_modelmeta().custom_metadata_map
        self.spec = json.loads(meta["longrope.spec"]) if "longrope.spec" in meta else None
        self.kv_policy = meta.get("longrope.kv_policy", "recompute")
        past = [i for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]
        self.num_layers = len(past) // 2
        self.kv_heads, self.head_dim = int(past[0].shape[1]), int(past[0].shape[3])
        self.cache_dtype = np.float16 if "float16" in past[0].type else np.float32

    def empty_cache(self, batch: int) -> dict[str, np.ndarray]:
        shape = (batch, self.kv_heads, 0, self.head_dim)
        return {f"past_key_values.{i}.{kind}": np.zeros(shape, self.cache_dtype)
                for i in range(self.num_layers) for kind in ("key", "value")}

    def forward(self, ids: np.ndarray, past: dict[str, np.ndarray] | None = None,
                attention_mask: np.ndarray | None = None,
                position_ids: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One call: ``ids`` ``(B, S)`` after ``past`` -> logits ``(B, S, V)`` and the new cache."""
        ids = np.asarray(ids, dtype=np.int64)
        batch, seq = ids.shape
        past = past if past is not None else self.empty_cache(batch)
        past_len = next(iter(past.values())).shape[2]
        if attention_mask is None:
            attention_mask = np.ones((batch, past_len + seq), dtype=np.int64)
        if position_ids is None:
            position_ids = np.broadcast_to(np.arange(past_len, past_len + seq, dtype=np.int64), (batch, seq))
        feeds: dict[str, Any] = {"input_ids": ids, "attention_mask": np.asarray(attention_mask, np.int64),
                                 "position_ids": np.ascontiguousarray(position_ids, dtype=np.int64), **past}
        outputs = self.session.run(None, feeds)
        names = [o.name for o in self.session.get_outputs()]
        present = {name.replace("present.", "past_key_values."): value
                   for name, value in zip(names[1:], outputs[1:], strict=True)}
        return outputs[0], present

    def logits(self, ids: list[int] | np.ndarray) -> np.ndarray:
        """Logits ``(len(ids), V)`` of one sequence in a single call (no cache)."""
        logits, _ = self.forward(np.asarray(ids, dtype=np.int64)[None])
        return logits[0]

    def crosses_switch(self, past_len: int, new_len: int) -> bool:
        """True when this call is the first to run the long factors over a short-rotated cache."""
        if self.spec is None or self.spec.get("policy") != "switch" or past_len == 0:
            return False
        original = int(self.spec["original_max_position_embeddings"])
        return past_len <= original < past_len + new_len

    def decode(self, ids: list[int] | np.ndarray, prompt_len: int, kv_policy: str | None = None) -> DecodeResult:
        """Prefill ``ids[:prompt_len]``, then feed the rest one token at a time with the KV cache.

        ``kv_policy`` (default: the model's ``longrope.kv_policy``) decides what happens at the switch.
        """
        policy = kv_policy or self.kv_policy
        ids = np.asarray(ids, dtype=np.int64)
        logits, past = self.forward(ids[None, :prompt_len])
        rows, recomputed = [logits[0]], []
        for end in range(prompt_len + 1, len(ids) + 1):
            past_len = end - 1
            if policy == "recompute" and self.crosses_switch(past_len, 1):
                step, past = self.forward(ids[None, :end])
                recomputed.append(end)
                rows.append(step[0, -1:])
                continue
            step, past = self.forward(ids[None, end - 1:end], past)
            rows.append(step[0])
        return DecodeResult(np.concatenate(rows, axis=0).astype(np.float32), recomputed)
