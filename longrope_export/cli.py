"""The ``longrope-export`` command line: thin Click commands over the library.

Exit codes (the README's table): 0 success; 1 a check ran and failed; 2 bad input or usage;
3 a runtime or dependency the command needs is missing or crashed.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from . import __version__
from .errors import EXIT_CHECK_FAILED, LongRoPEExportError, exit_code_for

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(func: F) -> F:
    """Turn library errors into one line on stderr and the exit code of the README's table."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except LongRoPEExportError as error:
            click.echo(f"error: {error.one_line()}", err=True)
            sys.exit(error.exit_code)
        except (ImportError, OSError) as error:
            click.echo(f"error: {type(error).__name__}: {' '.join(str(error).split())}", err=True)
            sys.exit(exit_code_for(error))

    return wrapper  # type: ignore[return-value]


def emit(data: dict[str, Any], as_json: bool, human: Callable[[dict[str, Any]], None]) -> None:
    """Print ``data`` as JSON on stdout, or the human form."""
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        human(data)


def write_report(path: Path | None, data: dict[str, Any]) -> None:
    if path is not None:
        path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def warn(notes: list[str]) -> None:
    for note in notes:
        click.echo(f"note: {note}", err=True)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout instead of text.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="longrope-export")
def main() -> None:
    """Carry LongRoPE factors into Hugging Face, GGUF and ONNX models, and check they arrived.

    \b
    Exit codes: 0 success, 1 a check failed, 2 bad input or usage,
    3 a runtime or dependency is missing or crashed.
    """


@main.command("inspect")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--original-max-position-embeddings", "original", type=int,
              help="Original context, to report the scale s of a bare factor file.")
@click.option("--max-position-embeddings", "target", type=int, help="Target context, likewise.")
@json_option
@handle_errors
def inspect_command(path: Path, original: int | None, target: int | None, as_json: bool) -> None:
    """Show the LongRoPE a factor file, JSON spec, config.json or model folder carries.

    Factor files named like microsoft/LongRoPE's (e.g. 2048k_la2_256k.csv) imply their
    contexts; --original-max-position-embeddings / --max-position-embeddings override them.
    """
    from .inspection import inspect_path

    report = inspect_path(path, original, target)
    emit(report, as_json, _print_inspect)
    if not as_json:
        warn(report.get("warnings") or (report.get("longrope") or {}).get("warnings") or [])


def _print_inspect(report: dict[str, Any]) -> None:
    click.echo(f"{report['path']}: {report['kind']}")
    if report["kind"] == "gguf":
        from .cli_gguf import print_gguf_inspect

        print_gguf_inspect(report)
        return
    if report["kind"] == "factor-file":
        ctx = report["contexts"]
        click.echo(f"  factors: {report['n_factors']} per vector (rotary dim {report['rotary_dim']}), "
                   f"{report['rows']} row(s){', per layer' if report['per_layer'] else ''}")
        click.echo(f"  range: {report['min']:g} .. {report['max']:g}, monotone: {report['monotone']}")
        if ctx["scale"]:
            click.echo(f"  contexts: {ctx['original']} -> {ctx['target']}, s = {ctx['scale']:g} (from {ctx['from']})")
        return
    if "model_type" in report:
        click.echo(f"  model_type: {report['model_type']} (supported: {report['supported']}), rotary dim "
                   f"{report['rotary_dim']}, rope_theta {report['rope_theta']:g}, rope type {report['rope_type']}")
    spec = report.get("longrope")
    if spec is None:
        click.echo("  no LongRoPE")
        return
    click.echo(f"  long factors: {len(spec['long_factors'][0])}, short factors: {len(spec['short_factors'][0])}, "
               f"policy {spec['policy']}")
    click.echo(f"  contexts: {spec['original_max_position_embeddings']} -> {spec['max_position_embeddings']}, "
               f"s = {spec['scale']:g}, attention factor {spec['effective_attention_factor']:.16g}"
               f"{' (explicit)' if spec['attention_factor'] is not None else ' (default)'}, "
               f"n_hat {spec['start_token']}")


def bake_options(func: F) -> F:
    """The options shared by ``bake`` and ``convert``."""
    options = [
        click.option("--factors", type=click.Path(path_type=Path),
                     help="Long factors: LongRoPE CSV, JSON spec, or a config.json / model folder with LongRoPE."),
        click.option("--short-factors", type=click.Path(path_type=Path),
                     help="Short factors (e.g. a 4k_*/8k_* recovery set); implies --policy switch."),
        click.option("--policy", type=click.Choice(["long-only", "switch"]),
                     help="long-only: long factors at every length (default without short factors); "
                          "switch: short up to the original context, long beyond."),
        click.option("--start-token", type=int, help="Start-token threshold n_hat (default 0)."),
        click.option("--original-max-position-embeddings", "original", type=int,
                     help="Original (pre-training) context; required for mistral."),
        click.option("--max-position-embeddings", "target", type=int, help="Target (extended) context."),
        click.option("--attention-factor", type=float, help="Explicit attention factor (mscale)."),
        click.option("--sliding-window", type=click.Choice(["drop", "keep"]), default="drop", show_default=True,
                     help="Mistral/Qwen2: drop the sliding window (full attention, as llama.cpp runs it) or keep it."),
        click.option("--transformers5-only", is_flag=True,
                     help="Write the 5.x rope_parameters dialect (for what 4.57 cannot hold)."),
        click.option("--link", is_flag=True, help="Hard-link weight files instead of copying (same filesystem)."),
        click.option("--force", is_flag=True, help="Replace an existing output."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _run_bake(model_dir: Path, output: Path, as_json: bool, **kw: Any) -> None:
    from .bake import BakeOptions, bake, plan_bake

    options = BakeOptions(factors=kw["factors"], short_factors=kw["short_factors"], policy=kw["policy"],
                          start_token=kw["start_token"], original_max_position_embeddings=kw["original"],
                          max_position_embeddings=kw["target"], attention_factor=kw["attention_factor"],
                          sliding_window=kw["sliding_window"], transformers5_only=kw["transformers5_only"],
                          link=kw["link"], force=kw["force"])
    plan = plan_bake(model_dir, options)
    total = sum(path.stat().st_size for path in plan.copies)
    with click.progressbar(length=total, label="copying weights", file=sys.stderr) as bar:
        result = bake(model_dir, output, options, on_bytes=bar.update)
    warn(result.notes)
    data = {"output": str(result.output), "spec": result.spec.to_dict(), "notes": result.notes,
            "files": [vars(item) for item in result.files]}
    emit(data, as_json, lambda d: click.echo(f"baked {d['output']} ({len(d['files'])} files)"))


@main.command("bake")
@click.argument("model_dir", type=click.Path(path_type=Path))
@bake_options
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Output checkpoint folder.")
@json_option
@handle_errors
def bake_command(model_dir: Path, output: Path, as_json: bool, **kw: Any) -> None:
    """Bake LongRoPE factors into a copy of the HF checkpoint MODEL_DIR.

    Weights are copied byte for byte (sha256-verified), config.json is rewritten in the dialect
    transformers 4.57 and 5.x both read, and longrope.json records the spec and its provenance.
    """
    _run_bake(model_dir, output, as_json, **kw)


@main.command("convert")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--to", "target_format", type=click.Choice(["hf", "gguf"]), required=True, help="Output format.")
@click.option("--outtype", type=click.Choice(["f32", "f16", "bf16", "q8_0"]), default="f32", show_default=True,
              help="GGUF: tensor type of the weight matrices (norms and factor tensors stay f32).")
@bake_options
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Output path.")
@json_option
@handle_errors
def convert_command(model_dir: Path, target_format: str, outtype: str, output: Path, as_json: bool,
                    **kw: Any) -> None:
    """Convert a (baked, or base + --factors) checkpoint to another format.

    --to hf is the same operation as bake. --to gguf writes one GGUF file (arch phi3, or llama
    for llama and mistral) that llama.cpp runs with the checkpoint's LongRoPE; with --factors
    (or any other bake option) the checkpoint is baked on the fly first.
    """
    if target_format == "hf" and outtype != "f32":
        raise click.UsageError("--outtype applies to --to gguf only")
    if target_format == "gguf":
        from .cli_gguf import run_convert_gguf

        run_convert_gguf(model_dir, output, outtype, as_json, **kw)
        return
    _run_bake(model_dir, output, as_json, **kw)


@main.group("validate")
def validate_group() -> None:
    """Checks that an artifact computes the LongRoPE its spec says (exit 0 pass, 1 fail)."""


@validate_group.command("rope")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--report", type=click.Path(path_type=Path), help="Write the JSON report to this file.")
@json_option
@handle_errors
def validate_rope_command(model_dir: Path, report: Path | None, as_json: bool) -> None:
    """Check that stock transformers computes the spec in MODEL_DIR/longrope.json (fp32, bitwise)."""
    from validation.rope_check import check_rope

    result = check_rope(model_dir)
    write_report(report, result)
    emit(result, as_json, _print_rope_check)
    if not result["passed"]:
        sys.exit(EXIT_CHECK_FAILED)


def _print_rope_check(result: dict[str, Any]) -> None:
    for item in result["comparisons"]:
        status = "ok  " if item["bitwise_equal"] else "FAIL"
        click.echo(f"{status} {item['name']:<26} positions {item['positions']} max abs error "
                   f"{item['max_abs_error']:.3g} {item['note']}")
    click.echo("passed" if result["passed"] else "FAILED")


from . import cli_gguf  # noqa: E402,F401  (registers gguf-patch and validate gguf)

if __name__ == "__main__":  # pragma: no cover
    main()
