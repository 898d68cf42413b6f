"""A busy port is one line and a non-zero exit, before any model loads; and a second server cannot
join a first through SO_REUSEPORT (the --workers listeners set it) and silently share its traffic."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, free_port


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port another server holds the way --workers listeners do: listening, with SO_REUSEPORT."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("busy", ["http", "grpc"])
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_busy_port_is_one_line_before_any_model_loads(
    busy: str, workers: str, held_port: int, export_model: Callable[..., Path]
) -> None:
    repository = export_model("classify").parent
    ports = {"http": str(free_port()), "grpc": str(free_port()), busy: str(held_port)}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "server", "--model-repository", str(repository), "--host", "127.0.0.1",
         "--http-port", ports["http"], "--grpc-port", ports["grpc"], "--workers", workers],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    what = "HTTP" if busy == "http" else "gRPC"
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert lines == [
        f"electra-serve: error: the {what} port 127.0.0.1:{held_port} is in use (Address already in use): "
        f"stop what listens there or choose another with --{busy}-port"
    ], lines
    assert time.monotonic() - started < 30, "the check comes before loading, not after"
