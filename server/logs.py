"""Logging for the server: `--log-format text` (a line for people) or `json` (one JSON object a
line, for collectors), at `--log-level`. Each answered request is one line from the
`electra.request` logger with its id, protocol, model, version, task, outcome code, item and row
counts and duration (under `request` in JSON). uvicorn's own loggers go the same way; its access
log stays off (the request lines replace it)."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(level: str = "info", fmt: str = "text", process: str | None = None) -> None:
    """process: which process of a multi-process server this is (w0, w1, ... for the API workers)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "{asctime}{levelname}{name}{message}",
                style="{",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                static_fields={"process": process} if process else None,
                json_ensure_ascii=False,
            )
        )
    else:
        tagged = TEXT_FORMAT.replace("%(name)s", f"[{process}] %(name)s") if process else TEXT_FORMAT
        handler.setFormatter(logging.Formatter(tagged))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
