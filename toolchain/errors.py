"""The errors the toolchain's CLIs (electra-export, electra-finetune, electra-eval) turn into one clear
line on stderr and a non-zero exit."""

from __future__ import annotations


class DataError(ValueError):
    """A training, validation or evaluation file that cannot be used as given (exit code 2)."""


class ExportError(Exception):
    """A checkpoint that cannot be loaded or an export that fails (electra-export and electra-finetune: exit code 1)."""


def where(path: object, line: int | None = None) -> str:
    """`file` or `file:line`, the prefix of every DataError message."""
    return f"{path}:{line}" if line is not None else str(path)
