"""Streaming GGUF output: a temporary file beside the target, renamed at the end, removed on any error."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from longrope_export.errors import InputError, OutputExistsError

if TYPE_CHECKING:
    import gguf


def check_output(target: Path, force: bool, sources: tuple[Path, ...] = ()) -> None:
    """Refuse an existing output without ``force``, a folder, or an output that is one of the inputs."""
    target = Path(target)
    for source in sources:
        if target.resolve() == Path(source).resolve():
            raise InputError("output is the input file", path=target,
                             fix="write to another file (inputs are never modified)")
    if target.is_dir():
        raise InputError("output is a folder", path=target, fix="give a file name ending in .gguf")
    if target.exists() and not force:
        raise OutputExistsError("output already exists", path=target, fix="pass --force to replace it")


@contextlib.contextmanager
def atomic_gguf(target: Path, arch_name: str, force: bool,
                sources: tuple[Path, ...] = ()) -> Iterator[gguf.GGUFWriter]:
    """Yield a ``GGUFWriter`` on a temporary file next to ``target``; rename it on success."""
    import gguf

    target = Path(target)
    check_output(target, force, sources)
    parent = target.parent if str(target.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=parent)
    os.close(handle)
    tmp = Path(name)
    writer = gguf.GGUFWriter(tmp, arch_name)
    try:
        yield writer
        writer.close()
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(Exception):
            writer.close()
        tmp.unlink(missing_ok=True)
        raise
