"""The ``longrope-export`` command line: thin Click commands over the library.

Exit codes (the README's table): 0 success; 1 a check ran and failed; 2 bad input or usage;
3 a runtime or dependency the command needs is missing or crashed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from . import __version__
from .cli_common import bake_options_from, emit, handle_errors, json_option, warn
from .cli_gguf import gguf_patch_command
from .cli_search import search_command
from .cli_validate import validate_group

F = TypeVar("F", bound=Callable[..., Any])


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
    if report["kind"] == "onnx":
        info = report["onnx"]
        click.echo(f"  onnx: {info['rotary_nodes']} longrope::LongRoPE nodes (rotary {info.get('rotary')}), opset "
                   f"{info['opset']}, IR {info['ir_version']}, {info.get('dtype')}, kv policy {info.get('kv_policy')}")
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
    from .bake import bake, plan_bake

    options = bake_options_from(kw)
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
@click.option("--to", "target_format", type=click.Choice(["hf", "gguf", "onnx"]), required=True,
              help="Output format.")
@click.option("--outtype", type=click.Choice(["f32", "f16", "bf16", "q8_0"]), default="f32", show_default=True,
              help="gguf: tensor type of the weight matrices (norms and factor tensors stay f32).")
@bake_options
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Output path.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="onnx: weight and activation type (positions and angles stay fp32).")
@click.option("--rotary", type=click.Choice(["function", "opset23", "contrib"]), default="function",
              show_default=True, help="onnx: lowering of the longrope::LongRoPE op (function: standard ops; "
              "opset23: standard RotaryEmbedding, ORT >= 1.23; contrib: com.microsoft.RotaryEmbedding).")
@click.option("--opset", type=int, help="onnx: default-domain opset (default 21; 23 for --rotary opset23).")
@click.option("--kv-policy", type=click.Choice(["recompute", "keep"]), default="recompute", show_default=True,
              help="onnx, policy switch: what a runtime does with the KV cache when a call first passes the "
                   "original context (recorded in metadata; see docs/onnx.md).")
@json_option
@handle_errors
def convert_command(model_dir: Path, target_format: str, outtype: str, output: Path, as_json: bool, dtype: str,
                    rotary: str, opset: int | None, kv_policy: str, **kw: Any) -> None:
    """Convert a (baked, or base + --factors) checkpoint to another format.

    \b
    --to hf is the same operation as bake.
    --to gguf writes one GGUF file (arch phi3, or llama for llama and mistral) that llama.cpp
    runs with the checkpoint's LongRoPE.
    --to onnx writes OUTPUT/model.onnx (+ model.onnx.data over 2 GB): an ONNX causal LM whose
    rotary is one longrope::LongRoPE node per use.
    With --factors (or any other bake option) the checkpoint is baked on the fly first.
    """
    if target_format != "gguf" and outtype != "f32":
        raise click.UsageError("--outtype applies to --to gguf only")
    if target_format == "hf":
        _run_bake(model_dir, output, as_json, **kw)
        return
    if target_format == "gguf":
        from .cli_gguf import run_convert_gguf

        run_convert_gguf(model_dir, output, outtype, as_json, **kw)
        return
    from converters.onnx_export import OnnxOptions, convert_to_onnx

    options = OnnxOptions(dtype=dtype, rotary=rotary, opset=opset, kv_policy=kv_policy,  # type: ignore[arg-type]
                          force=kw["force"])
    result = convert_to_onnx(model_dir, output, options, bake_options_from(kw))
    warn(result.notes)
    data = {"output": str(result.output), "model": str(result.model_path), "opset": result.opset,
            "rotary": result.rotary, "external_data": result.external_data, "size_bytes": result.size_bytes,
            "spec": result.spec.to_dict(), "notes": result.notes}
    emit(data, as_json, lambda d: click.echo(f"exported {d['model']} ({d['size_bytes']} bytes, rotary {d['rotary']}, "
                                             f"opset {d['opset']})"))


@main.command("demo")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("demo-out"), show_default=True,
              help="Folder for the baked model, the reports and the plot.")
@click.option("--force", is_flag=True, help="Write into an existing folder.")
@json_option
@handle_errors
def demo_command(output: Path, force: bool, as_json: bool) -> None:
    """Run the main job end to end on the bundled demo model (a tiny Llama trained on the KJV text).

    \b
    DIR/model/          the baked checkpoint (8x context)
    DIR/model.gguf      the GGUF export (f32)
    DIR/onnx/           the ONNX export (fp32)
    DIR/reports/        rope, parity (GGUF, ONNX; JSON + JUnit), perplexity,
                        runtimes, passkey and summary JSON
    DIR/perplexity.png  perplexity against context length, one curve per method
    """
    from .demo import run_demo

    summary = run_demo(output, force, progress=lambda message: click.echo(message, err=True))
    emit(summary, as_json, _print_demo)


def _print_demo(summary: dict[str, Any]) -> None:
    click.echo("perplexity at 8x the trained context (held-out half 1 / half 2):")
    for name, halves in summary["perplexity_at_8x"].items():
        h1, h2 = halves["half1"], halves["half2"]
        click.echo(f"  {name:<52} {h1['perplexity']:8.2f} +- {h1['stderr']:.2f}   "
                   f"{h2['perplexity']:8.2f} +- {h2['stderr']:.2f}")
    click.echo(f"same order on both halves: {summary['same_order_on_both_halves']}; "
               f"no scaling worse at 8x than 1x: {summary['no_scaling_worse_at_8x_than_1x']}")
    for item in summary["runtimes"]:
        click.echo(f"8x perplexity through {item['runtime']}: {item['perplexity']:.4f} vs torch "
                   f"{item['torch_perplexity']:.4f} (relative difference {item['relative_difference']:.2e})")
    click.echo(f"passkey accuracy: {summary['passkey']}")


main.add_command(validate_group)
main.add_command(gguf_patch_command)
main.add_command(search_command)

if __name__ == "__main__":  # pragma: no cover
    main()
