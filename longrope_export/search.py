"""LongRoPE's evolutionary factor search, guided by perplexity (REFERENCE.md s.1).

An individual is one long-factor vector plus a start-token threshold ``n_hat``; its fitness is a
number to minimise (the perplexity of the model at the target length on calibration windows),
given as a callable so any runtime -- or a synthetic function in a test -- can score it.

- The first population holds the PI, NTK and YaRN vectors and mutations of them.
- Each generation keeps the best half (the parents) and fills the rest with mutations of one
  parent and crossovers of two.
- Every individual obeys LongRoPE's constraints: factors non-decreasing and in ``[1, 1.25*s]``.
  Children are projected back onto that set (isotonic regression in log space, then clipping)
  rather than rejected, so no draw is wasted.
- All randomness comes from one ``random.Random(seed)``: the same seed and fitness give the same
  result. Identical individuals are scored once.

The algorithm follows the description of microsoft/LongRoPE's ``evolution/`` (population, parents,
mutation and crossover, monotone constraint); the operators are this project's own.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .baselines import ntk_factors, pi_factors, yarn_factors
from .errors import InputError
from .spec import LongRoPESpec

Fitness = Callable[[LongRoPESpec], float]
#: Factors are rounded to this many decimals: short JSON, and near-identical children dedupe.
DECIMALS = 4
#: Attempts at drawing a child not scored before, before scoring a duplicate from the cache.
MAX_RETRIES = 8
#: The mutation step shrinks geometrically to this fraction by the last generation.
FINAL_STEP = 0.25


@dataclass(frozen=True)
class SearchSettings:
    """Knobs of the search (defaults: REFERENCE.md s.6, a search sized for a tiny model on a CPU)."""

    population: int = 16
    generations: int = 8
    parents: int | None = None  # default: half the population
    mutation_rate: float = 0.3  # probability that a mutation moves each factor
    mutation_step: float = 0.1  # typical mutation size, in log(factor)
    start_tokens: tuple[int, ...] = (0,)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.population < 4:
            raise InputError(f"population {self.population} is too small", fix="use --population 4 or more")
        if self.generations < 0:
            raise InputError(f"generations {self.generations} must be >= 0", fix="use --generations 0 or more")
        if not 1 <= self.n_parents < self.population:
            raise InputError(f"parents {self.parents} must be in [1, population)", fix="keep fewer parents")
        if not 0 < self.mutation_rate <= 1 or not self.mutation_step > 0:
            raise InputError("mutation rate must be in (0, 1] and mutation step > 0", fix="use the defaults")
        if not self.start_tokens or any(n < 0 for n in self.start_tokens):
            raise InputError(f"start tokens {self.start_tokens} must be non-empty and >= 0",
                             fix="pass e.g. --start-tokens 0,2,4,8")

    @property
    def n_parents(self) -> int:
        return self.parents if self.parents is not None else self.population // 2


@dataclass(frozen=True)
class Candidate:
    """One scored individual."""

    factors: tuple[float, ...]
    start_token: int
    fitness: float
    origin: str  # pi / ntk / yarn / mutation / crossover

    @property
    def key(self) -> tuple[tuple[float, ...], int]:
        return self.factors, self.start_token


@dataclass(frozen=True)
class GenerationRecord:
    """The population after one generation (0: the initial population)."""

    generation: int
    best: float
    median: float
    evaluations: int  # distinct individuals scored so far
    best_origin: str


@dataclass
class SearchResult:
    """The best spec found, the best individual, and the per-generation history."""

    spec: LongRoPESpec
    best: Candidate
    history: list[GenerationRecord]
    settings: SearchSettings
    baselines: dict[str, float] = field(default_factory=dict)  # fitness of the PI/NTK/YaRN seeds

    def provenance(self) -> dict[str, Any]:
        """What to record beside the spec: the method, its settings and its history."""
        return {"method": "evolutionary search (LongRoPE)", "settings": asdict(self.settings),
                "best_fitness": self.best.fitness, "best_origin": self.best.origin,
                "seed_fitness": self.baselines,
                "seed_fitness_note": "the PI, NTK and YaRN factor vectors under this spec's attention factor",
                "history": [asdict(record) for record in self.history]}


def monotone_projection(values: Sequence[float]) -> list[float]:
    """The closest non-decreasing sequence in least squares (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [sum, count]
    for value in values:
        blocks.append([value, 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    out: list[float] = []
    for total, count in blocks:
        out.extend([total / count] * int(count))
    return out


def constrain(log_factors: Sequence[float], ceiling: float) -> tuple[float, ...]:
    """Factors from log-factors: non-decreasing, in ``[1, ceiling]``, rounded (rounding keeps the order)."""
    top = math.log(ceiling)
    monotone = monotone_projection(log_factors)
    return tuple(min(max(round(math.exp(min(max(u, 0.0), top)), DECIMALS), 1.0), ceiling) for u in monotone)


def is_valid(factors: Sequence[float], ceiling: float) -> bool:
    """LongRoPE's constraints: every factor in ``[1, ceiling]``, non-decreasing."""
    in_range = all(1.0 <= f <= ceiling for f in factors)
    return in_range and all(factors[i] >= factors[i - 1] for i in range(1, len(factors)))


def seed_vectors(template: LongRoPESpec) -> dict[str, tuple[float, ...]]:
    """PI, NTK and YaRN factor vectors for the template's geometry, constrained."""
    n_pairs, scale, ceiling = template.n_pairs, template.scale, 1.25 * template.scale
    raw = {"yarn": yarn_factors(n_pairs, scale, template.rope_theta, template.original_max_position_embeddings),
           "ntk": ntk_factors(n_pairs, scale), "pi": pi_factors(n_pairs, scale)}
    return {name: constrain([math.log(f) for f in factors], ceiling) for name, factors in raw.items()}


def mutate(factors: Sequence[float], rng: random.Random, settings: SearchSettings, ceiling: float,
           shrink: float = 1.0) -> tuple[float, ...]:
    """Move some factors by log-normal noise, or shift one contiguous block of them together.

    ``shrink`` scales the step: later generations refine rather than explore.
    """
    logs = [math.log(f) for f in factors]
    step = shrink * settings.mutation_step * math.exp(rng.uniform(math.log(0.25), math.log(2.5)))
    if rng.random() < 0.3:  # block shift: moves runs of equal factors that pointwise noise cannot
        first = rng.randrange(len(logs))
        last = rng.randrange(first, len(logs)) + 1
        shift = rng.gauss(0.0, step)
        logs = [u + shift if first <= i < last else u for i, u in enumerate(logs)]
    else:
        moved = [i for i in range(len(logs)) if rng.random() < settings.mutation_rate] or [rng.randrange(len(logs))]
        for i in moved:
            logs[i] += rng.gauss(0.0, step)
    return constrain(logs, ceiling)


def crossover(first: Sequence[float], second: Sequence[float], rng: random.Random,
              ceiling: float) -> tuple[float, ...]:
    """Each factor from either parent (uniform), or a random blend of the two (in log space)."""
    a, b = [math.log(f) for f in first], [math.log(f) for f in second]
    if rng.random() < 0.5:
        child = [x if rng.random() < 0.5 else y for x, y in zip(a, b, strict=True)]
    else:
        weight = rng.random()
        child = [weight * x + (1 - weight) * y for x, y in zip(a, b, strict=True)]
    return constrain(child, ceiling)


class _Scorer:
    """Scores individuals once each (the cache also makes duplicates cheap to detect)."""

    def __init__(self, template: LongRoPESpec, fitness: Fitness) -> None:
        self.template, self.fitness = template, fitness
        self.cache: dict[tuple[tuple[float, ...], int], float] = {}

    def spec(self, factors: tuple[float, ...], start_token: int) -> LongRoPESpec:
        return self.template.replace(long_factors=(factors,), short_factors=(factors,), policy="long-only",
                                     start_token=start_token)

    def seen(self, factors: tuple[float, ...], start_token: int) -> bool:
        return (factors, start_token) in self.cache

    def score(self, factors: tuple[float, ...], start_token: int, origin: str) -> Candidate:
        key = (factors, start_token)
        if key not in self.cache:
            value = float(self.fitness(self.spec(factors, start_token)))
            self.cache[key] = value if math.isfinite(value) else math.inf
        return Candidate(factors, start_token, self.cache[key], origin)


def _record(generation: int, population: list[Candidate], evaluations: int) -> GenerationRecord:
    ranked = sorted(population, key=lambda c: c.fitness)
    return GenerationRecord(generation, ranked[0].fitness, statistics.median(c.fitness for c in ranked),
                            evaluations, ranked[0].origin)


def _fresh(draw: Callable[[], tuple[tuple[float, ...], int]], scorer: _Scorer) -> tuple[tuple[float, ...], int]:
    """A child not scored before, if one turns up within a few draws."""
    child = draw()
    for _ in range(MAX_RETRIES):
        if not scorer.seen(*child):
            break
        child = draw()
    return child


def _initial(scorer: _Scorer, rng: random.Random, settings: SearchSettings,
             ceiling: float) -> tuple[list[Candidate], dict[str, float]]:
    seeds = seed_vectors(scorer.template)
    first = settings.start_tokens[0]
    population = [scorer.score(factors, first, name) for name, factors in seeds.items()]
    baselines = {c.origin: c.fitness for c in population}
    names = list(seeds)
    while len(population) < settings.population:
        parent = seeds[names[len(population) % len(names)]]

        def draw(p: tuple[float, ...] = parent) -> tuple[tuple[float, ...], int]:
            return mutate(p, rng, settings, ceiling), rng.choice(settings.start_tokens)

        population.append(scorer.score(*_fresh(draw, scorer), "mutation"))
    return population, baselines


def _next_generation(parents: list[Candidate], scorer: _Scorer, rng: random.Random, settings: SearchSettings,
                     ceiling: float, generation: int) -> list[Candidate]:
    new = settings.population - len(parents)
    shrink = FINAL_STEP ** (generation / max(1, settings.generations))
    children: list[Candidate] = []
    for index in range(new):
        if index % 2 == 0 or len(parents) < 2:
            parent = rng.choice(parents)

            def draw(p: Candidate = parent) -> tuple[tuple[float, ...], int]:
                start = rng.choice(settings.start_tokens) if rng.random() < 0.2 else p.start_token
                return mutate(p.factors, rng, settings, ceiling, shrink), start

            origin = "mutation"
        else:
            one, two = rng.sample(parents, 2)

            def draw(p: Candidate = one, q: Candidate = two) -> tuple[tuple[float, ...], int]:
                return crossover(p.factors, q.factors, rng, ceiling), rng.choice((p.start_token, q.start_token))

            origin = "crossover"
        children.append(scorer.score(*_fresh(draw, scorer), origin))
    return children


def check_settings(template: LongRoPESpec, settings: SearchSettings) -> None:
    """Raise :class:`InputError` for settings the template cannot take (before any work is done)."""
    bad = [n for n in settings.start_tokens if n >= template.original_max_position_embeddings]
    if bad:
        raise InputError(f"start tokens {bad} must be below the original context "
                         f"{template.original_max_position_embeddings}", fix="pass smaller --start-tokens")


def search(template: LongRoPESpec, fitness: Fitness, settings: SearchSettings | None = None,
           progress: Callable[[GenerationRecord], None] | None = None) -> SearchResult:
    """Search long factors (and ``n_hat``) for ``template``'s geometry, minimising ``fitness``.

    ``template`` supplies rotary dim, rope_theta, the contexts and the attention factor; the result
    is a ``long-only`` spec. ``progress`` is called after each generation.

    Example:
        >>> from longrope_export.baselines import baseline_spec
        >>> template = baseline_spec("longrope-init", rotary_dim=8, rope_theta=1e4, original=16, target=64)
        >>> result = search(template, lambda spec: sum(spec.long_factors[0]), SearchSettings(generations=2))
        >>> result.history[-1].best <= result.history[0].best
        True
    """
    settings = settings or SearchSettings()
    check_settings(template, settings)
    rng = random.Random(settings.seed)
    ceiling = 1.25 * template.scale
    scorer = _Scorer(template, fitness)
    population, baselines = _initial(scorer, rng, settings, ceiling)
    history = [_record(0, population, len(scorer.cache))]
    if progress:
        progress(history[-1])
    for generation in range(1, settings.generations + 1):
        parents = sorted(population, key=lambda c: c.fitness)[: settings.n_parents]
        population = parents + _next_generation(parents, scorer, rng, settings, ceiling, generation)
        history.append(_record(generation, population, len(scorer.cache)))
        if progress:
            progress(history[-1])
    best = min(population, key=lambda c: c.fitness)
    return SearchResult(scorer.spec(best.factors, best.start_token), best, history, settings, baselines)


def calibration_windows(ids: Any, length: int, count: int) -> list[Any]:
    """``count`` non-overlapping windows of ``length + 1`` tokens, spread evenly over ``ids``."""
    span, total = length + 1, len(ids)
    if count < 1:
        raise InputError(f"windows {count} must be >= 1", fix="use --windows 1 or more")
    if count * span > total:
        raise InputError(f"the data has {total} tokens, fewer than {count} windows of {span}",
                         fix="give more text with --data or fewer --windows")
    spacing = (total - span) / max(1, count - 1)
    return [ids[int(i * spacing): int(i * spacing) + span] for i in range(count)]


def perplexity_fitness(model_dir: Path, windows: Sequence[Any], device: str = "cpu") -> Fitness:
    """Fitness = perplexity (token mean over ``windows``) of the model with a candidate's rotary.

    The model is loaded once; each call swaps in the candidate's rotary embedding.
    """
    import torch

    from validation.torch_runtime import TorchRuntime

    from .hf_loader import patch_rotary

    runtime = TorchRuntime.load(Path(model_dir), device=device)

    def fitness(spec: LongRoPESpec) -> float:
        patch_rotary(runtime.model, spec)
        runtime.spec = spec
        nll = torch.cat([runtime.token_nll(window).double() for window in windows])
        return math.exp(float(nll.mean()))

    return fitness


def save_result(result: SearchResult, path: Path, force: bool = False,
                provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the spec JSON (``spec.to_dict()`` plus ``provenance``) atomically; returns what was written."""
    import json
    import os
    import tempfile

    from .errors import OutputExistsError

    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError("output already exists", path=path, fix="pass --force to replace it")
    if path.is_dir():
        raise InputError("output is a folder", path=path, fix="give a file name such as factors.json")
    data = result.spec.to_dict()
    data["provenance"] = {**result.provenance(), **(provenance or {})}
    parent = path.parent if str(path.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return data
