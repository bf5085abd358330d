"""Split GGUF models (``NAME-00001-of-0000N.gguf``, as llama-gguf-split and gguf-py write them).

llama.cpp reads every key of a split model from the first file, ``split.tensors.count`` included,
and only tensors from the others. So gguf-patch rewrites the first file (LongRoPE keys, factor
tensors, the new tensor count), rewrites a later file only when it holds a tensor LongRoPE
replaces, and copies every other file byte for byte. All outputs appear together or not at all.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from longrope_export.errors import InputError

from .gguf_io import check_output
from .gguf_longrope import field_value, open_reader

if TYPE_CHECKING:
    import gguf

SPLIT_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def split_count(reader: gguf.GGUFReader) -> int:
    import gguf

    count = field_value(reader, gguf.Keys.Split.LLM_KV_SPLIT_COUNT)
    return 1 if count is None else int(count)


def shard_names(first: Path, count: int, what: str) -> list[Path]:
    """The ``count`` file names of a split model whose first file is ``first``."""
    match = SPLIT_NAME.match(first.name)
    fix = f"name it like MODEL-00001-of-{count:05d}.gguf (llama.cpp finds the other files by that name)"
    if match is None or int(match["no"]) != 1 or int(match["count"]) != count:
        raise InputError(f"{what} of a model split into {count} files is not named as its first file", path=first,
                         fix=fix)
    return [first.with_name(f"{match['prefix']}-{index:05d}-of-{count:05d}.gguf") for index in range(1, count + 1)]


def input_size(first: Path) -> int:
    """Bytes of a (possibly split) input model, for a progress bar; 0 when it cannot be told."""
    match = SPLIT_NAME.match(first.name)
    paths = [first] if match is None else list(first.parent.glob(f"{match['prefix']}-*-of-{match['count']}.gguf"))
    return sum(path.stat().st_size for path in paths if path.is_file())


def split_inputs(reader: gguf.GGUFReader, first: Path) -> list[tuple[Path, gguf.GGUFReader]]:
    """``[(path, reader)]`` of every file of the model (one entry for an unsplit file), checked."""
    import gguf

    count = split_count(reader)
    if count <= 1:
        return [(first, reader)]
    number = field_value(reader, gguf.Keys.Split.LLM_KV_SPLIT_NO)
    if number not in (None, 0):
        raise InputError(f"this is file {int(number) + 1} of a model split into {count} files", path=first,
                         fix="give the first file (...-00001-of-...gguf)")
    shards = [(first, reader)]
    for index, path in enumerate(shard_names(first, count, "input")[1:], start=1):
        if not path.is_file():
            raise InputError(f"file {index + 1} of {count} of the split model is missing", path=path,
                             fix="keep all files of a split model in one folder")
        shard = open_reader(path)
        if field_value(shard, gguf.Keys.Split.LLM_KV_SPLIT_NO) != index:
            raise InputError(f"split.no is {field_value(shard, gguf.Keys.Split.LLM_KV_SPLIT_NO)}, expected {index}",
                             path=path, fix="the files of the split model do not belong together")
        shards.append((path, shard))
    return shards


def split_outputs(output: Path, count: int, force: bool, sources: tuple[Path, ...]) -> list[Path]:
    """Output names (checked: none exists without ``force``, none is an input)."""
    outputs = [Path(output)] if count <= 1 else shard_names(Path(output), count, "output")
    for path in outputs:
        check_output(path, force, sources)
    return outputs


@contextlib.contextmanager
def atomic_files(targets: list[Path]) -> Iterator[list[Path]]:
    """Temporary files beside ``targets``; all renamed into place at the end, all removed on error."""
    temps: list[Path] = []
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
            os.close(handle)
            temps.append(Path(name))
        yield temps
        for temp, target in zip(temps, targets, strict=True):
            os.replace(temp, target)
    except BaseException:
        for temp in temps:
            temp.unlink(missing_ok=True)
        raise
