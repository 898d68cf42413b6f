"""Errors the fine-tuning and evaluation CLIs turn into one clear line on stderr."""

from __future__ import annotations


class DataError(ValueError):
    """A training, validation or evaluation file that cannot be used as given (exit code 2)."""


def where(path: object, line: int | None = None) -> str:
    """`file` or `file:line`, the prefix of every DataError message."""
    return f"{path}:{line}" if line is not None else str(path)
