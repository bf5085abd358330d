"""Passkey retrieval, as in the LongRoPE paper: a random 5-digit key hidden at a random depth in
filler text; the model must repeat it. Accuracy per context length."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch

INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
         "I will quiz you about the important information there.")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
QUESTION = "What is the pass key? The pass key is"


class GreedyRuntime(Protocol):
    name: str

    def greedy(self, ids: torch.Tensor, new_tokens: int) -> list[int]: ...

    def factor_set(self, length: int) -> str: ...


@dataclass
class PasskeyResult:
    """Accuracy of one model at one length."""

    label: str
    length: int
    trials: int
    correct: int
    accuracy: float
    factor_set: str
    depths: list[float]
    answers: list[str]


def passkey_prompt(tokenizer: Any, length: int, key: str, depth: float) -> torch.Tensor:
    """Token ids of a prompt of about ``length`` tokens with ``key`` at relative ``depth``."""
    needle = f" The pass key is {key}. Remember it. {key} is the pass key. "
    fixed = len(tokenizer(INTRO + needle + QUESTION)["input_ids"])
    per_filler = len(tokenizer(" " + FILLER)["input_ids"])
    n_filler = max(1, (length - fixed) // per_filler)
    before = int(round(n_filler * depth))
    text = (INTRO + (" " + FILLER) * before + needle + (" " + FILLER) * (n_filler - before) + " " + QUESTION)
    ids = tokenizer(text)["input_ids"]
    return torch.tensor(ids[-length:] if len(ids) > length else ids)


def passkey(runtime: GreedyRuntime, tokenizer: Any, length: int, trials: int, label: str, seed: int = 0,
            on_trial: Callable[[], None] | None = None) -> PasskeyResult:
    """Run ``trials`` retrievals at ``length`` tokens; a trial is correct if the key appears in the
    greedy continuation."""
    rng = random.Random(seed * 1_000_003 + length)
    correct, depths, answers = 0, [], []
    for _ in range(trials):
        key = str(rng.randint(10000, 99999))
        depth = rng.random()
        ids = passkey_prompt(tokenizer, length, key, depth)
        answer = tokenizer.decode(runtime.greedy(ids, 8))
        correct += key in answer.replace(" ", "")
        depths.append(round(depth, 3))
        answers.append(answer)
        if on_trial:
            on_trial()
    return PasskeyResult(label, length, trials, correct, correct / trials, runtime.factor_set(length), depths,
                         answers)


def as_dicts(results: list[PasskeyResult]) -> list[dict]:
    return [asdict(r) for r in results]
