"""Helpers every command shares: error handling and exit codes, JSON output, reports."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from .errors import LongRoPEExportError, exit_code_for

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




def bake_options_from(kw: dict[str, Any]) -> Any:
    """``BakeOptions`` from the keyword arguments of the shared bake options."""
    from .bake import BakeOptions

    return BakeOptions(factors=kw.get("factors"), short_factors=kw.get("short_factors"), policy=kw.get("policy"),
                       start_token=kw.get("start_token"), original_max_position_embeddings=kw.get("original"),
                       max_position_embeddings=kw.get("target"), attention_factor=kw.get("attention_factor"),
                       sliding_window=kw.get("sliding_window") or "drop",
                       transformers5_only=bool(kw.get("transformers5_only")), link=bool(kw.get("link")),
                       force=bool(kw.get("force")))
