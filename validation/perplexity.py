"""Long-context perplexity, the LongRoPE paper's protocol.

The documents are tokenised and joined into one stream; for each context length L the stream is
cut into windows of L tokens (non-overlapping by default; with ``stride`` S < L each window
scores only its last S tokens, the first window all). ``max_tokens`` caps the scored tokens per
length. Reported: perplexity (exp of the mean token NLL), its standard error (delta method over
the per-window means), windows, tokens, and the factor set the runtime used.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch

from longrope_export.errors import InputError


class NllRuntime(Protocol):
    name: str

    def token_nll(self, ids: torch.Tensor, score_from: int = 0) -> torch.Tensor: ...

    def factor_set(self, length: int) -> str: ...


@dataclass
class PerplexityPoint:
    """Perplexity of one model/method at one context length."""

    label: str
    length: int
    perplexity: float
    stderr: float
    mean_nll: float
    windows: int
    tokens: int
    factor_set: str
    window_nll: list[float]


def read_documents(paths: Sequence[Path]) -> str:
    """The text of every data file (``.gz`` allowed), joined by blank lines."""
    texts = []
    for path in paths:
        try:
            raw = gzip.decompress(Path(path).read_bytes()) if str(path).endswith(".gz") else Path(path).read_bytes()
            texts.append(raw.decode("utf-8"))
        except FileNotFoundError:
            raise InputError("data file not found", path=path, fix="check --data") from None
        except (UnicodeDecodeError, OSError) as error:
            raise InputError(f"cannot read text ({error})", path=path, fix="give UTF-8 text files") from None
    return "\n\n".join(texts)


def windows(n_tokens: int, length: int, stride: int | None, max_tokens: int | None) -> list[tuple[int, int]]:
    """(start, score_from) of each window of ``length`` tokens (+1 for the last target)."""
    stride = stride or length
    if stride > length:
        raise InputError(f"stride {stride} > length {length}", fix="use --stride <= the smallest length")
    out, scored, start = [], 0, 0
    while start + length + 1 <= n_tokens:
        score_from = 0 if not out else length - stride
        out.append((start, score_from))
        scored += length - score_from
        if max_tokens is not None and scored >= max_tokens:
            break
        start += stride
    return out


def perplexity(runtime: NllRuntime, ids: torch.Tensor, length: int, label: str, stride: int | None = None,
               max_tokens: int | None = None, on_window: Callable[[], None] | None = None) -> PerplexityPoint:
    """Perplexity of ``runtime`` on the token stream ``ids`` at context ``length``."""
    plan = windows(len(ids), length, stride, max_tokens)
    if not plan:
        raise InputError(f"the data has {len(ids)} tokens, fewer than one window of {length + 1}",
                         fix="give more text with --data or smaller --lengths")
    total, count, means = 0.0, 0, []
    for start, score_from in plan:
        nll = runtime.token_nll(ids[start: start + length + 1], score_from).double()
        total += float(nll.sum())
        count += nll.numel()
        means.append(float(nll.mean()))
        if on_window:
            on_window()
    mean = total / count
    spread = math.sqrt(sum((m - sum(means) / len(means)) ** 2 for m in means) / max(1, len(means) - 1))
    stderr_nll = spread / math.sqrt(len(means)) if len(means) > 1 else float("nan")
    ppl = math.exp(mean)
    return PerplexityPoint(label, length, ppl, ppl * stderr_nll, mean, len(plan), count,
                           runtime.factor_set(length), means)


def as_dicts(points: Iterable[PerplexityPoint]) -> list[dict]:
    return [asdict(p) for p in points]


def plot(points: Sequence[PerplexityPoint], path: Path, title: str = "perplexity vs context length") -> None:
    """PNG: one curve per label, error bars = standard error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for label in dict.fromkeys(p.label for p in points):
        series = sorted((p for p in points if p.label == label), key=lambda p: p.length)
        ax.errorbar([p.length for p in series], [p.perplexity for p in series],
                    yerr=[0 if math.isnan(p.stderr) else p.stderr for p in series], marker="o", capsize=3,
                    label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("perplexity")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
