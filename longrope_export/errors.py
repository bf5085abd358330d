"""The project's exceptions, and the one table that maps them to exit codes.

Every error also subclasses a builtin, so callers that catch ``ValueError`` or
``RuntimeError`` keep working. Messages name the file, the value and the fix.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_RUNTIME = 3


class LongRoPEExportError(Exception):
    """Base class: every error the library raises on purpose."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, *, path: object | None = None, fix: str | None = None) -> None:
        self.message = message
        self.path = None if path is None else str(path)
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """``FILE: what is wrong (fix: how to fix it)`` on a single line."""
        text = self.message if self.path is None else f"{self.path}: {self.message}"
        if self.fix:
            text = f"{text} (fix: {self.fix})"
        return " ".join(text.split())


class InputError(LongRoPEExportError, ValueError):
    """Bad input or usage: a file, a value or an option the user can correct (exit 2)."""

    exit_code = EXIT_BAD_INPUT


class OutputExistsError(InputError, FileExistsError):
    """The output already exists and ``--force`` was not given (exit 2)."""


class NotPortableError(InputError):
    """The spec cannot be written in a form every supported runtime reads (exit 2)."""


class CheckFailed(LongRoPEExportError, AssertionError):
    """A check ran and the artifact failed it (exit 1)."""

    exit_code = EXIT_CHECK_FAILED


class RuntimeUnavailable(LongRoPEExportError, RuntimeError):
    """A runtime or dependency the command needs is missing or crashed (exit 3)."""

    exit_code = EXIT_RUNTIME


def exit_code_for(error: BaseException) -> int:
    """The exit code the CLI uses for ``error``: the README's table, in one place."""
    if isinstance(error, LongRoPEExportError):
        return error.exit_code
    if isinstance(error, ImportError):
        return EXIT_RUNTIME
    if isinstance(error, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
        return EXIT_BAD_INPUT
    return EXIT_RUNTIME
