"""The transformers runtime: a baked checkpoint (or a base model with any spec patched in).

Per-token negative log-likelihoods are computed with the LM head and the loss taken in chunks of
positions, so memory follows the window length, never window x vocabulary at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from longrope_export import rope
from longrope_export.errors import InputError, RuntimeUnavailable
from longrope_export.hf_loader import checkpoint_spec, patch_rotary
from longrope_export.spec import LongRoPESpec

HEAD_CHUNK = 1024


@dataclass
class TorchRuntime:
    """A causal LM in transformers with the rotary embedding of ``spec``."""

    model: torch.nn.Module
    spec: LongRoPESpec | None
    device: str = "cpu"
    name: str = "torch"

    @classmethod
    def load(cls, path: Path, spec: LongRoPESpec | None = None, device: str = "cpu",
             dtype: torch.dtype = torch.float32, device_map: str | None = None) -> TorchRuntime:
        """Load ``path``; with ``spec`` given (a baseline, say) its rotary replaces the model's.

        ``dtype`` bf16/fp16 runs the weights in half precision while the rotary angles stay fp32
        (``rope.py`` computes them, then casts). ``device_map`` (e.g. ``auto``) spreads a model over
        several GPUs through accelerate: written to the transformers API, untested here (no GPU).
        """
        from transformers import AutoModelForCausalLM

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeUnavailable("CUDA requested but torch sees no GPU", fix="use --device cpu")
        if not (Path(path) / "config.json").exists():
            raise InputError("no config.json", path=path, fix="give a Hugging Face checkpoint folder")
        if device.startswith("cuda"):
            torch.set_float32_matmul_precision("highest")  # TF32 would round the angle products
        if device_map:
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, device_map=device_map).eval()
            device = str(next(model.parameters()).device)
        else:
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(device).eval()
        if spec is None and _has_longrope(Path(path)):
            spec = checkpoint_spec(Path(path))
        if spec is not None:
            patch_rotary(model, spec)
        return cls(model, spec, device)

    def factor_set(self, length: int) -> str:
        return "plain" if self.spec is None else rope.factor_set_for(self.spec, length)

    @torch.no_grad()
    def token_nll(self, ids: torch.Tensor, score_from: int = 0) -> torch.Tensor:
        """NLL of ``ids[t+1]`` given ``ids[:t+1]`` for t >= score_from (1-D in, 1-D out, fp32)."""
        ids = ids.to(self.device)[None]
        if self.device.startswith("cuda"):
            torch.backends.cuda.matmul.allow_tf32 = False  # TF32 rounds the angle products
        hidden = self.model.model(input_ids=ids).last_hidden_state[0]
        head = self.model.get_output_embeddings()
        out = []
        for start in range(score_from, ids.shape[1] - 1, HEAD_CHUNK):
            stop = min(start + HEAD_CHUNK, ids.shape[1] - 1)
            logits = head(hidden[start:stop]).float()
            out.append(torch.nn.functional.cross_entropy(logits, ids[0, start + 1: stop + 1], reduction="none"))
        return torch.cat(out).cpu()

    @torch.no_grad()
    def greedy(self, ids: torch.Tensor, new_tokens: int) -> list[int]:
        """Greedy continuation (recomputes the prompt: no KV cache across the factor switch)."""
        seq = ids.to(self.device)[None]
        out: list[int] = []
        for _ in range(new_tokens):
            logits = self.model(input_ids=seq).logits[0, -1]
            token = int(logits.argmax())
            out.append(token)
            seq = torch.cat([seq, torch.tensor([[token]], device=self.device)], dim=1)
        return out


def _has_longrope(path: Path) -> bool:
    from longrope_export.sources import read_json, spec_from_config

    if (path / "longrope.json").exists():
        return True
    return spec_from_config(read_json(path / "config.json"), str(path / "config.json")) is not None
