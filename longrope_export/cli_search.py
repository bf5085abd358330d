"""``search``: LongRoPE's evolutionary factor search on a model and calibration text. Thin: the
search is ``longrope_export.search``; this parses options, checks them before loading anything,
and writes the spec JSON atomically."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from .cli_common import emit, handle_errors, json_option
from .errors import InputError, OutputExistsError


def parse_start_tokens(text: str) -> tuple[int, ...]:
    """``"0,2,4,8"`` -> ``(0, 2, 4, 8)``."""
    try:
        values = tuple(int(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise InputError(f"--start-tokens {text!r} is not a comma-separated list of integers",
                         fix="pass e.g. --start-tokens 0,2,4,8") from None
    if not values:
        raise InputError("--start-tokens is empty", fix="pass e.g. --start-tokens 0")
    return values


@click.command("search")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--data", "data_files", type=click.Path(path_type=Path), multiple=True, required=True,
              help="Calibration text (UTF-8, .gz allowed); repeat for several files. Use training-like text, "
                   "never your evaluation set.")
@click.option("--max-position-embeddings", "target", type=int, required=True, help="Target (extended) context.")
@click.option("--original-max-position-embeddings", "original", type=int,
              help="Original context (default: the model's config).")
@click.option("--population", type=int, default=16, show_default=True, help="Individuals per generation.")
@click.option("--generations", type=int, default=8, show_default=True, help="Generations after the first.")
@click.option("--windows", type=int, default=8, show_default=True,
              help="Calibration windows of target+1 tokens, spread evenly over the data.")
@click.option("--start-tokens", default="0", show_default=True,
              help="Candidate start-token thresholds n_hat, e.g. 0,2,4,8 (HF and llama.cpp ignore n_hat > 0).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same result).")
@click.option("--device", default="cpu", show_default=True, help="torch device for the model.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Spec JSON to write.")
@click.option("--force", is_flag=True, help="Replace an existing output.")
@json_option
@handle_errors
def search_command(model_dir: Path, data_files: tuple[Path, ...], target: int, original: int | None,
                   population: int, generations: int, windows: int, start_tokens: str, seed: int, device: str,
                   output: Path, force: bool, as_json: bool) -> None:
    """Search LongRoPE factors for MODEL_DIR at --max-position-embeddings by perplexity on --data.

    \b
    Evolutionary search (LongRoPE, REFERENCE.md s.1): the first population holds PI, NTK and YaRN
    factors and mutations of them; each generation keeps the best half and adds mutations and
    crossovers; factors stay non-decreasing and in [1, 1.25*s]. Fitness is the perplexity at the
    target length on the calibration windows. Cost: about population x (generations / 2 + 1)
    x windows forward passes of target tokens.
    Writes the project's spec JSON plus a "provenance" key (settings, per-generation history).
    """
    from .search import SearchSettings, check_settings

    if output.exists() and not force:
        raise OutputExistsError("output already exists", path=output, fix="pass --force to replace it")
    settings = SearchSettings(population=population, generations=generations,
                              start_tokens=parse_start_tokens(start_tokens), seed=seed)
    template = _template(model_dir, original, target)
    check_settings(template, settings)
    if windows < 1:
        raise InputError(f"--windows {windows} must be >= 1", fix="use --windows 1 or more")
    data = _run_search(model_dir, data_files, template, settings, windows, device, output, force)
    emit(data, as_json, _print_result)


def _template(model_dir: Path, original: int | None, target: int) -> Any:
    from .baselines import baseline_spec
    from .sources import model_geometry, read_json

    config_path = Path(model_dir) / "config.json"
    if not config_path.exists():
        raise InputError("no config.json", path=model_dir, fix="give a Hugging Face checkpoint folder")
    geometry = model_geometry(read_json(config_path), str(config_path))
    if original is None:
        original = geometry.original_max_position_embeddings or geometry.max_position_embeddings
    return baseline_spec("longrope-init", rotary_dim=geometry.rotary_dim, rope_theta=geometry.rope_theta,
                         original=original, target=target).replace(source=str(model_dir))


def _run_search(model_dir: Path, data_files: tuple[Path, ...], template: Any, settings: Any, count: int,
                device: str, output: Path, force: bool) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer

    from validation.perplexity import read_documents

    from .search import calibration_windows, perplexity_fitness, save_result, search

    text = read_documents(list(data_files))
    ids = torch.tensor(AutoTokenizer.from_pretrained(str(model_dir))(text)["input_ids"])
    windows = calibration_windows(ids, template.max_position_embeddings, count)
    start = time.time()
    result = search(template, perplexity_fitness(model_dir, windows, device), settings, progress=lambda r: click.echo(
        f"generation {r.generation}: best {r.best:.4g}, median {r.median:.4g} ({r.evaluations} scored, "
        f"{time.time() - start:.0f} s)", err=True))
    data = save_result(result, output, force, provenance={
        "model": str(model_dir), "data": [str(path) for path in data_files], "data_tokens": len(ids),
        "windows": count, "window_tokens": template.max_position_embeddings + 1,
        "seconds": round(time.time() - start, 1)})
    return {"output": str(output), **data}


def _print_result(data: dict[str, Any]) -> None:
    prov = data["provenance"]
    seeds = ", ".join(f"{name} {value:.4g}" for name, value in prov["seed_fitness"].items())
    click.echo(f"wrote {data['output']}: perplexity {prov['best_fitness']:.4g} at {data['max_position_embeddings']} "
               f"(seeds: {seeds}), n_hat {data['start_token']}, "
               f"{prov['history'][-1]['evaluations']} candidates in {prov['seconds']} s")
