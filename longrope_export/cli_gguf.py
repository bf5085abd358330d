"""The GGUF commands: ``convert --to gguf`` (called from ``convert``), ``gguf-patch``, ``validate gguf``,
and the GGUF part of ``inspect``. Thin: each calls the library and prints what it returns."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import click

from .cli_common import bake_options_from, emit, handle_errors, json_option, warn, write_report
from .cli_validate import validate_group
from .errors import EXIT_CHECK_FAILED


def run_convert_gguf(model_dir: Path, output: Path, outtype: str, as_json: bool, **kw: Any) -> None:
    """``convert --to gguf``."""
    from converters.gguf_writer import prepared_plan, total_bytes, write_gguf

    options = bake_options_from(kw)
    options = options if options.changes_longrope() else None
    force = bool(kw.get("force"))
    with prepared_plan(model_dir, output, outtype, options, force) as plan:
        with click.progressbar(length=total_bytes(plan), label="writing GGUF", file=sys.stderr) as bar:
            write_gguf(plan, output, force, on_bytes=bar.update)
    warn(plan.notes)
    data = {"output": str(output), "arch": plan.arch.gguf_arch, "outtype": outtype, "spec": plan.spec.to_dict(),
            "n_tensors": len(plan.tensors), "notes": plan.notes}
    emit(data, as_json, lambda d: click.echo(f"wrote {d['output']} (arch {d['arch']}, {d['outtype']}, "
                                             f"{d['n_tensors']} tensors)"))


def print_gguf_inspect(report: dict[str, Any]) -> None:
    """Human form of ``inspect model.gguf``."""
    click.echo(f"  arch {report['arch']}, file type {report['file_type']}, {report['n_tensors']} tensors, "
               f"rotary dim {report['rotary_dim']}, rope_theta {report['rope_theta']}, "
               f"context length {report['context_length']}, rope.scaling.type {report['rope_scaling_type']}")
    for problem in report["load_problems"]:
        click.echo(f"  llama.cpp cannot load it: {problem}")
    if report["silent_drop"]:
        click.echo("  silent drop: rope.scaling.type longrope without factor tensors (llama.cpp runs plain RoPE)")
    spec = report["longrope"]
    if spec is None:
        click.echo("  no LongRoPE")
        return
    for which in ("long", "short"):
        values = spec[f"{which}_factors"]
        click.echo(f"  {which} factors: " + ("missing" if values is None else
                                             f"{len(values)} f32, {min(values):g} .. {max(values):g}"))
    click.echo(f"  original context {spec['original_context_length']}, attn_factor {spec['attn_factor']!r}, "
               f"n_hat {spec['start_token']}, switch policy {spec['switch_policy']}")
    for note in spec["llama_cpp_selection"]:
        click.echo(f"  {note}")


@click.command("gguf-patch")
@click.argument("input_path", metavar="IN.gguf", type=click.Path(path_type=Path))
@click.option("--factors", type=click.Path(path_type=Path), required=True,
              help="Long factors: LongRoPE CSV, JSON spec, or a config.json / model folder with LongRoPE.")
@click.option("--short-factors", type=click.Path(path_type=Path),
              help="Short factors (e.g. a 4k_*/8k_* recovery set); implies --policy switch.")
@click.option("--policy", type=click.Choice(["long-only", "switch"]),
              help="long-only (short := long) or switch (separate short factors).")
@click.option("--start-token", type=int, help="Start-token threshold n_hat (recorded; llama.cpp ignores it).")
@click.option("--original-max-position-embeddings", "original", type=int,
              help="Original context (default: from the factor spec, else the file's context length).")
@click.option("--max-position-embeddings", "target", type=int, help="Target (extended) context.")
@click.option("--attention-factor", type=float, help="Explicit attention factor (mscale).")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Output GGUF file.")
@click.option("--force", is_flag=True, help="Replace an existing output.")
@json_option
@handle_errors
def gguf_patch_command(input_path: Path, output: Path, as_json: bool, **kw: Any) -> None:
    """Add or replace LongRoPE in IN.gguf (f32 or quantized), copying every other key and tensor unchanged.

    A split model is given by its first file (NAME-00001-of-0000N.gguf) and written as
    -o OUT-00001-of-0000N.gguf; files without LongRoPE tensors are copied byte for byte.
    """
    from converters.gguf_patch import patch_gguf
    from converters.gguf_split import input_size

    with contextlib.ExitStack() as stack:
        bars: list[Any] = []

        def on_bytes(count: int) -> None:  # the bar appears once writing starts, not before a refusal
            if not bars:
                bars.append(stack.enter_context(click.progressbar(length=input_size(input_path),
                                                                  label="writing GGUF", file=sys.stderr)))
            bars[0].update(count)

        result = patch_gguf(input_path, output, bake_options_from(kw), on_bytes=on_bytes)
    warn(result.notes)
    data = {"output": str(result.output), "spec": result.spec.to_dict(), "replaced_keys": result.replaced_keys,
            "dropped_tensors": result.dropped_tensors, "notes": result.notes}
    emit(data, as_json, lambda d: click.echo(f"wrote {d['output']} (replaced {len(d['replaced_keys'])} key(s), "
                                             f"{len(d['dropped_tensors'])} tensor(s))"))


@validate_group.command("gguf")
@click.argument("gguf_path", metavar="MODEL.gguf", type=click.Path(path_type=Path))
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True,
              help="The baked checkpoint the GGUF file came from (transformers is the reference).")
@click.option("--lengths", default="64,300", show_default=True, help="Comma-separated prompt lengths in tokens.")
@click.option("--isolate/--in-process", default=True, show_default=True,
              help="Run llama.cpp in a child process, so a crash on a malformed file is an error, not a crash.")
@click.option("--report", type=click.Path(path_type=Path), help="Write the JSON report to this file.")
@json_option
@handle_errors
def validate_gguf_command(gguf_path: Path, checkpoint: Path, lengths: str, isolate: bool, report: Path | None,
                          as_json: bool) -> None:
    """Compare llama.cpp logits on MODEL.gguf with transformers on its checkpoint (exit 0 pass, 1 fail)."""
    from validation.gguf_parity import gguf_parity

    try:
        sizes = tuple(int(item) for item in lengths.split(",") if item.strip())
    except ValueError:
        raise click.BadParameter(f"{lengths!r} is not a comma-separated list of integers",
                                 param_hint="--lengths") from None
    result = gguf_parity(gguf_path, checkpoint, sizes, isolate=isolate)
    write_report(report, result)
    emit(result, as_json, _print_parity)
    if not result["passed"]:
        sys.exit(EXIT_CHECK_FAILED)


def _print_parity(result: dict[str, Any]) -> None:
    click.echo(f"{result['gguf']} ({result['file_type']}) vs {result['checkpoint']}: {result['tolerance_rule']}")
    for item in result["lengths"]:
        status = ("ok  " if item["passed"] else "FAIL") if result["gated"] else "info"
        extra = "".join(f", {key.replace('_', ' ')} {item[key]:.3g}" for key in
                        ("wrong_factor_set_error", "plain_rope_error", "start_token_effect") if key in item)
        click.echo(f"{status} {item['n_tokens']:>6} tokens ({item['factor_set']}, n_ctx {item['n_ctx']}): max abs "
                   f"error {item['max_abs_error']:.3g} (tolerance {item['tolerance']:.3g}, logit scale "
                   f"{item['logit_scale']:.3g}), KL {item['mean_kl']:.3g}, top-1 {item['top1_agreement']:.4f}{extra}")
    if not result["gated"]:
        click.echo("recorded (not gated: only f32 files are held to the tolerance)")
    else:
        click.echo("passed" if result["passed"] else "FAILED")
