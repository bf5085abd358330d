"""The factor search: constraints, progress on a known optimum, reproducibility, n_hat, and the CLI."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from longrope_export.baselines import baseline_spec
from longrope_export.cli import main
from longrope_export.search import (
    SearchSettings,
    constrain,
    crossover,
    is_valid,
    monotone_projection,
    mutate,
    search,
    seed_vectors,
)
from longrope_export.spec import LongRoPESpec

DEMO_MODEL = Path(__file__).resolve().parents[1] / "longrope_export" / "data" / "demo_model"
TEMPLATE = baseline_spec("longrope-init", rotary_dim=32, rope_theta=1e4, original=256, target=2048)
CEILING = 1.25 * TEMPLATE.scale
#: A known optimum inside the constraints, far from every seed vector (PI, NTK, YaRN).
OPTIMUM = [1.0 + 4.0 * (i / 15) ** 2 for i in range(16)]


def distance(spec: LongRoPESpec, target: list[float]) -> float:
    return sum((math.log(a) - math.log(b)) ** 2 for a, b in zip(spec.long_factors[0], target, strict=True))


def test_monotone_projection_and_constrain() -> None:
    assert monotone_projection([3.0, 1.0, 2.0]) == [2.0, 2.0, 2.0]
    assert monotone_projection([1.0, 3.0, 2.0, 4.0]) == [1.0, 2.5, 2.5, 4.0]
    factors = constrain([math.log(x) for x in (0.5, 3.0, 2.0, 50.0)], 10.0)
    assert factors == (1.0, 2.4495, 2.4495, 10.0)
    assert all(is_valid(vector, CEILING) for vector in seed_vectors(TEMPLATE).values())
    assert not is_valid((1.0, 3.0, 2.0), CEILING) and not is_valid((0.9, 1.0), CEILING)


def test_every_individual_obeys_the_constraints() -> None:
    seen: list[LongRoPESpec] = []
    # pulls below 1, above 1.25*s, and downwards between neighbours
    wild = [0.2 if i % 2 else 40.0 for i in range(8)] + [40.0] * 8

    def fitness(spec: LongRoPESpec) -> float:
        seen.append(spec)
        return distance(spec, wild) + 0.1 * spec.start_token

    result = search(TEMPLATE, fitness, SearchSettings(population=12, generations=6, start_tokens=(0, 4, 8)))
    assert len(seen) == result.history[-1].evaluations > 12
    for spec in seen:
        assert is_valid(spec.long_factors[0], CEILING), spec.long_factors
        assert spec.short_factors == spec.long_factors and spec.policy == "long-only"
        assert spec.start_token in (0, 4, 8)
        assert spec.rotary_dim == 32 and spec.max_position_embeddings == 2048
    assert len({(s.long_factors, s.start_token) for s in seen}) == len(seen)  # no individual scored twice


def test_mutation_and_crossover_stay_inside_the_bounds() -> None:
    rng, settings = random.Random(0), SearchSettings(mutation_step=1.0)  # big steps hit both bounds
    low, high = (1.0,) * 16, (CEILING,) * 16
    children = [mutate(parent, rng, settings, CEILING) for parent in (low, high) for _ in range(100)]
    children += [crossover(low, high, rng, CEILING) for _ in range(100)]
    assert all(is_valid(child, CEILING) for child in children)
    assert any(1.0 in child and CEILING in child for child in children)  # clipped, not rejected
    assert len(set(children)) > 150  # many distinct children (at a bound, half the moves clip back)


def test_search_approaches_a_known_optimum() -> None:
    def fitness(spec: LongRoPESpec) -> float:
        return distance(spec, OPTIMUM)

    result = search(TEMPLATE, fitness, SearchSettings(population=16, generations=25, seed=1))
    bests = [record.best for record in result.history]
    assert all(b <= a for a, b in zip(bests, bests[1:], strict=False))  # the best is always kept
    seed_best = min(result.baselines.values())
    assert result.best.fitness == bests[-1] == fitness(result.spec)
    assert result.best.fitness < 0.25 * seed_best, (seed_best, bests)
    assert result.history[-1].median < result.history[0].median


def test_search_picks_the_better_start_token() -> None:
    def fitness(spec: LongRoPESpec) -> float:
        return distance(spec, OPTIMUM) + (0.0 if spec.start_token == 4 else 5.0)

    result = search(TEMPLATE, fitness, SearchSettings(population=8, generations=4, start_tokens=(0, 4)))
    assert result.spec.start_token == 4
    with pytest.raises(ValueError, match="below the original context"):
        search(TEMPLATE, fitness, SearchSettings(start_tokens=(0, 256)))


def test_same_seed_same_result() -> None:
    def run(seed: int) -> tuple:
        result = search(TEMPLATE, lambda spec: distance(spec, OPTIMUM), SearchSettings(generations=5, seed=seed))
        return result.spec.long_factors, [(r.best, r.median, r.evaluations) for r in result.history]

    assert run(3) == run(3)
    assert run(3) != run(4)


def _text(tmp_path: Path) -> Path:
    words = "and the lord spake unto moses saying speak unto the children of israel that they bring me an offering"
    path = tmp_path / "calibration.txt"
    path.write_text(" ".join(f"{words} {i}." for i in range(120)))
    return path


@pytest.mark.parametrize("extra, needle", [
    (["--max-position-embeddings", "128"], "original context 256 >= target context 128"),
    (["--max-position-embeddings", "512", "--start-tokens", "0,x"], "--start-tokens '0,x'"),
    (["--max-position-embeddings", "512", "--start-tokens", "0,300"], "below the original context 256"),
    (["--max-position-embeddings", "512", "--population", "2"], "population 2 is too small"),
    (["--max-position-embeddings", "65536"], "fewer than 8 windows of 65537"),
])
def test_cli_bad_input_exits_2(tmp_path: Path, extra: list[str], needle: str) -> None:
    out = tmp_path / "factors.json"
    result = CliRunner().invoke(main, ["search", str(DEMO_MODEL), "--data", str(_text(tmp_path)), "-o", str(out),
                                       *extra])
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert needle in result.stderr, result.stderr
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["calibration.txt"]


def test_cli_writes_a_spec_inspect_reads(tmp_path: Path) -> None:
    out = tmp_path / "factors.json"
    args = ["search", str(DEMO_MODEL), "--data", str(_text(tmp_path)), "--max-position-embeddings", "512",
            "--population", "4", "--generations", "1", "--windows", "1", "-o", str(out)]
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert json.loads(result.stdout)["long_factors"] == written["long_factors"]
    spec = LongRoPESpec.from_dict(written)
    assert spec.original_max_position_embeddings == 256 and spec.max_position_embeddings == 512
    assert is_valid(spec.long_factors[0], 1.25 * 2) and spec.rotary_dim == 64
    provenance = written["provenance"]
    assert len(provenance["history"]) == 2 and provenance["settings"]["population"] == 4
    assert provenance["best_fitness"] <= min(provenance["seed_fitness"].values())
    assert math.isfinite(provenance["best_fitness"]) and provenance["best_fitness"] > 1
    inspect = CliRunner().invoke(main, ["inspect", str(out), "--json"])
    assert inspect.exit_code == 0, inspect.output
    assert json.loads(inspect.stdout)["longrope"]["long_factors"] == written["long_factors"]
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "already exists" in again.stderr and "--force" in again.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibration.txt", "factors.json"]
