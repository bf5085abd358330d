"""``longrope-export validate ...``: checks that exit 0 on pass and 1 on failure."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from .cli_common import emit, handle_errors, json_option, write_report
from .errors import EXIT_CHECK_FAILED, InputError


def parse_lengths(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        lengths = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"--lengths {text!r} is not a comma-separated list of integers",
                         fix="e.g. --lengths 256,512,1024") from None
    if not lengths or min(lengths) < 2:
        raise InputError(f"--lengths {text!r} must hold integers >= 2", fix="e.g. --lengths 256,512,1024")
    return lengths


@click.group("validate")
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




def load_runtime(model: Path, runtime: str, device: str, spec: Any = None, dtype: str = "fp32",
                 device_map: str | None = None) -> Any:
    """The runtime that runs MODEL (torch for a checkpoint folder)."""
    if runtime == "torch":
        import torch

        from validation.torch_runtime import TorchRuntime

        torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
        return TorchRuntime.load(model, spec=spec, device=device, dtype=torch_dtype, device_map=device_map)
    if dtype != "fp32" or device_map:
        raise InputError(f"--dtype {dtype} / --device-map apply to --runtime torch only",
                         fix="drop them, or use --runtime torch")
    if spec is not None:
        raise InputError("--baselines run on the torch runtime only (they patch the checkpoint's rotary)",
                         fix="drop --baselines or use --runtime torch")
    if runtime == "llama.cpp":
        from validation.export_nll import LlamaCppNll

        return LlamaCppNll(model)
    from validation.export_nll import OnnxNll

    return OnnxNll(model)


def tokenizer_dir(model: Path, tokenizer: Path | None) -> Path:
    """Where the tokenizer lives: --tokenizer, else MODEL when it is a folder with tokenizer files."""
    if tokenizer is not None:
        return tokenizer
    if model.is_dir() and any((model / name).exists() for name in ("tokenizer.json", "tokenizer.model")):
        return model
    raise InputError("no tokenizer next to the model", path=model,
                     fix="pass --tokenizer DIR (the checkpoint the export was made from)")


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as error:
        raise InputError(f"no tokenizer ({' '.join(str(error).split())[:200]})", path=path,
                         fix="give --tokenizer DIR with tokenizer files") from None


def baseline_labels(text: str | None) -> list[str]:
    from .baselines import METHODS

    labels = [part.strip() for part in (text or "").split(",") if part.strip()]
    unknown = [label for label in labels if label not in METHODS]
    if unknown:
        raise InputError(f"--baselines {','.join(unknown)} unknown", fix=f"choose from {', '.join(METHODS)}")
    return labels


runtime_option = click.option("--runtime", type=click.Choice(["torch", "onnxruntime", "llama.cpp"]),
                              default="torch", show_default=True, help="Runtime that runs MODEL.")
device_option = click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
                             help="torch device (cuda: fp32 rotary math with TF32 off).")
dtype_option = click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
                            help="torch weights dtype; rotary angles stay fp32.")
device_map_option = click.option("--device-map", help="torch: from_pretrained device_map (e.g. auto: several GPUs "
                                 "through accelerate; untested here, no GPU).")


@validate_group.command("perplexity")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", "data", type=click.Path(path_type=Path), multiple=True, required=True,
              help="Text file(s) (.gz allowed); repeat --data for several.")
@click.option("--lengths", default="256,512,1024,2048", show_default=True, help="Context lengths, comma-separated.")
@click.option("--stride", type=int, help="Sliding windows scoring their last N tokens (default: non-overlapping).")
@click.option("--max-tokens", type=int, help="Cap the scored tokens per length.")
@click.option("--baselines", help="Also run these specs on the same weights: none,pi,ntk,yarn,longrope-init.")
@click.option("--tokenizer", type=click.Path(path_type=Path), help="Tokenizer folder (default: MODEL).")
@runtime_option
@device_option
@dtype_option
@device_map_option
@click.option("--plot", type=click.Path(path_type=Path), help="Write a PNG of perplexity against length.")
@click.option("--report", type=click.Path(path_type=Path), help="Write the JSON report to this file.")
@json_option
@handle_errors
def validate_perplexity_command(model: Path, data: tuple[Path, ...], lengths: str, stride: int | None,
                                max_tokens: int | None, baselines: str | None, tokenizer: Path | None,
                                runtime: str, device: str, dtype: str, device_map: str | None, plot: Path | None,
                                report: Path | None, as_json: bool) -> None:
    """Perplexity of MODEL on long documents at several context lengths (mean and standard error)."""
    from validation.perplexity import as_dicts, perplexity, read_documents, windows
    from validation.perplexity import plot as plot_points

    points_lengths = parse_lengths(lengths) or []
    ids = _encode(load_tokenizer(tokenizer_dir(model, tokenizer)), read_documents(data))
    runs = [("model", None)] + [(label, label) for label in baseline_labels(baselines)]
    points = []
    for label, method in runs:
        run = load_runtime(model, runtime, device, _baseline_for(model, method) if method else None, dtype,
                           device_map)
        for length in points_lengths:
            count = len(windows(len(ids), length, stride, max_tokens))
            with click.progressbar(length=count, label=f"{label} @ {length}", file=sys.stderr) as bar:
                points.append(perplexity(run, ids, length, label, stride, max_tokens,
                                         on_window=lambda bar=bar: bar.update(1)))
    result = {"model": str(model), "runtime": runtime, "data": [str(d) for d in data], "tokens": len(ids),
              "points": as_dicts(points)}
    if plot:
        plot_points(points, plot, f"{model.name}: perplexity vs context")
    write_report(report, result)
    emit(result, as_json, _print_perplexity)


def _encode(tokenizer: Any, text: str) -> Any:
    import torch

    return torch.tensor(tokenizer(text)["input_ids"], dtype=torch.int64)


def _baseline_for(model: Path, method: str) -> Any:
    from .baselines import baseline_spec
    from .hf_loader import checkpoint_spec

    spec = checkpoint_spec(model)
    return baseline_spec(method, rotary_dim=spec.rotary_dim, rope_theta=spec.rope_theta,
                         original=spec.original_max_position_embeddings, target=spec.max_position_embeddings)


def _print_perplexity(result: dict[str, Any]) -> None:
    click.echo(f"{'method':<16}{'length':>8}{'ppl':>10}{'stderr':>9}{'windows':>9}{'tokens':>9}  factors")
    for p in result["points"]:
        click.echo(f"{p['label']:<16}{p['length']:>8}{p['perplexity']:>10.3f}{p['stderr']:>9.3f}"
                   f"{p['windows']:>9}{p['tokens']:>9}  {p['factor_set']}")


@validate_group.command("passkey")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--lengths", default="256,2048", show_default=True, help="Prompt lengths, comma-separated.")
@click.option("--trials", type=int, default=10, show_default=True, help="Trials per length.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--tokenizer", type=click.Path(path_type=Path), help="Tokenizer folder (default: MODEL).")
@runtime_option
@device_option
@click.option("--report", type=click.Path(path_type=Path), help="Write the JSON report to this file.")
@json_option
@handle_errors
def validate_passkey_command(model: Path, lengths: str, trials: int, seed: int, tokenizer: Path | None,
                             runtime: str, device: str, report: Path | None, as_json: bool) -> None:
    """Passkey retrieval accuracy of MODEL per prompt length."""
    from validation.passkey import as_dicts, passkey

    tok = load_tokenizer(tokenizer_dir(model, tokenizer))
    run = load_runtime(model, runtime, device)
    results = []
    for length in parse_lengths(lengths) or []:
        with click.progressbar(length=trials, label=f"passkey @ {length}", file=sys.stderr) as bar:
            results.append(passkey(run, tok, length, trials, "model", seed, on_trial=lambda: bar.update(1)))
    data = {"model": str(model), "runtime": runtime, "results": as_dicts(results)}
    write_report(report, data)
    emit(data, as_json, lambda d: [click.echo(f"{r['length']:>8} tokens: {r['correct']}/{r['trials']} "
                                              f"({r['factor_set']} factors)") for r in d["results"]])


@validate_group.command("parity")
@click.argument("reference", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@click.option("--lengths", help="Token lengths (default: one below the original context, one past it).")
@click.option("--allow-lossy", is_flag=True,
              help="Accept what the candidate's runtime cannot express (n_hat in llama.cpp, its per-context switch).")
@click.option("--report", type=click.Path(path_type=Path), help="Write the JSON report to this file.")
@click.option("--junit", type=click.Path(path_type=Path), help="Write a JUnit XML report to this file.")
@json_option
@handle_errors
def validate_parity_command(reference: Path, candidate: Path, lengths: str | None, allow_lossy: bool,
                            report: Path | None, junit: Path | None, as_json: bool) -> None:
    """Compare CANDIDATE (baked checkpoint, .gguf or ONNX export) with the baked REFERENCE checkpoint.

    \b
    Gate 1: the LongRoPE read back out of CANDIDATE equals REFERENCE's (factors bitwise in fp32,
            attention factor, contexts).
    Gate 2: logits on the same token ids within the runtime's tolerance, plus KL and top-1.
    Exit 0 when both hold, 1 when one fails.
    """
    from validation.junit import parity_junit
    from validation.parity import run_parity

    result = run_parity(reference, candidate, parse_lengths(lengths), allow_lossy)
    data = result.to_dict()
    write_report(report, data)
    if junit:
        parity_junit(result, junit)
    emit(data, as_json, _print_parity)
    if not result.passed:
        sys.exit(EXIT_CHECK_FAILED)


def _print_parity(data: dict[str, Any]) -> None:
    click.echo(f"{data['candidate']} ({data['runtime']}, {data['dtype']}) vs {data['reference']}")
    for check in data["spec_checks"]:
        if not check["passed"]:
            click.echo(f"  FAIL spec: {check['check']}: reference {check['reference']}, candidate {check['candidate']}")
    click.echo(f"  spec gate: {'ok' if data['spec_passed'] else 'FAILED'} ({len(data['spec_checks'])} checks)")
    for item in data["lossy"]:
        effect = "" if item["max_abs_effect"] is None else f", max abs effect {item['max_abs_effect']:.3g} " \
                                                           f"at {item['length']} tokens"
        click.echo(f"  lossy: {item['what']}{effect}{' (allowed)' if data['allow_lossy'] else ''}")
    for r in data["lengths"]:
        click.echo(f"  {'ok  ' if r['passed'] else 'FAIL'} {r['length']:>6} tokens [{r['factor_set_reference']}]: "
                   f"max abs {r['max_abs']:.3g} (tol {r['tolerance']:.3g}, scale {r['logit_scale']:.3g}), "
                   f"mean {r['mean_abs']:.3g}, KL {r['kl']:.3g}, top-1 {r['top1']:.3f}")
    worst = data["worst"]
    if worst:
        click.echo(f"  worst: {worst['length']} tokens, max abs {worst['max_abs']:.3g} = {worst['ratio']:.3g} x tol")
    click.echo("passed" if data["passed"] else "FAILED")
