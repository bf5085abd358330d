"""Checkpoint files: safetensors header checks, verified byte-for-byte copies, atomic output folders."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError, OutputExistsError, RuntimeUnavailable

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
#: Files bake writes itself instead of copying.
REWRITTEN = ("config.json", "longrope.json")
BLOCK = 1 << 22


@dataclass(frozen=True)
class CopiedFile:
    """One file of the output: how it got there and its sha256."""

    name: str
    sha256: str
    size: int
    how: str  # "copy" | "link" | "written"


def check_safetensors(path: Path) -> int:
    """Check a safetensors file's header and that its size matches the tensors it declares.

    Returns the number of tensors; a truncated or corrupt file raises :class:`InputError`.
    """
    size = path.stat().st_size
    fix = "the file is truncated or corrupt: download or save it again"
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            raise InputError(f"safetensors file of {size} bytes has no header", path=path, fix=fix)
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > size - 8 or header_len > 100_000_000:
            raise InputError(f"safetensors header length {header_len} exceeds the file ({size} bytes)",
                             path=path, fix=fix)
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise InputError("safetensors header is not valid JSON", path=path, fix=fix) from None
    if not isinstance(header, dict):
        raise InputError("safetensors header is not a JSON object", path=path, fix=fix)
    tensors = {name: info for name, info in header.items() if name != "__metadata__"}
    end = max((int(info["data_offsets"][1]) for info in tensors.values()), default=0)
    if 8 + header_len + end != size:
        raise InputError(f"safetensors declares {8 + header_len + end} bytes but the file has {size}",
                         path=path, fix=fix)
    return len(tensors)


def _copy_hashing(src: Path, dst: Path, on_bytes: Callable[[int], None] | None) -> str:
    digest = hashlib.sha256()
    with open(src, "rb") as reader, open(dst, "wb") as writer:
        while chunk := reader.read(BLOCK):
            digest.update(chunk)
            writer.write(chunk)
            if on_bytes:
                on_bytes(len(chunk))
    shutil.copystat(src, dst)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(BLOCK):
            digest.update(chunk)
    return digest.hexdigest()


def copy_verified(src: Path, dst: Path, link: bool = False,
                  on_bytes: Callable[[int], None] | None = None) -> CopiedFile:
    """Copy (or hard-link) ``src`` to ``dst`` and verify the result's sha256 against the source."""
    size = src.stat().st_size
    if link:
        try:
            os.link(src, dst)
        except OSError:
            link = False  # another filesystem, or links not allowed: fall back to a copy
        else:
            if on_bytes:
                on_bytes(size)
            return CopiedFile(src.name, _sha256(dst), size, "link")
    source_hash = _copy_hashing(src, dst, on_bytes)
    written_hash = _sha256(dst)
    if written_hash != source_hash:
        raise RuntimeUnavailable(f"copy does not match its source (sha256 {written_hash} != {source_hash})",
                                 path=dst, fix="check the disk and run again")
    return CopiedFile(src.name, source_hash, size, "copy")


def write_text(folder: Path, name: str, text: str) -> CopiedFile:
    """Write a text file into the output folder and record its hash."""
    data = text.encode("utf-8")
    (folder / name).write_bytes(data)
    return CopiedFile(name, hashlib.sha256(data).hexdigest(), len(data), "written")


def files_to_copy(model_dir: Path) -> tuple[list[Path], list[str]]:
    """Top-level files of a checkpoint to carry over unchanged, and notes on what is skipped."""
    keep, notes = [], []
    for entry in sorted(model_dir.iterdir()):
        if entry.name in REWRITTEN or entry.name.startswith("."):
            continue
        if entry.is_dir():
            notes.append(f"sub-folder {entry.name}/ is not copied")
            continue
        keep.append(entry)
    return keep, notes


def check_no_overlap(target: Path, sources: tuple[Path, ...]) -> None:
    """Refuse an output that is, contains or lies inside one of the inputs (inputs are never modified)."""
    resolved = Path(target).resolve()
    for source in sources:
        src = Path(source).resolve()
        if resolved == src or src in resolved.parents or resolved in src.parents:
            raise InputError(f"output {target} overlaps the input {source}", path=target,
                             fix="write to a folder outside the input (inputs are never modified)")


@contextlib.contextmanager
def atomic_output_dir(target: Path, force: bool, sources: tuple[Path, ...] = ()) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; rename it to ``target`` on success, remove it on error."""
    target = Path(target)
    check_no_overlap(target, sources)
    if target.exists() and not force:
        raise OutputExistsError("output already exists", path=target, fix="pass --force to replace it")
    if target.exists() and not target.is_dir():
        raise InputError("output exists and is not a folder", path=target, fix="choose another -o")
    parent = target.parent if str(target.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
    try:
        yield tmp
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
