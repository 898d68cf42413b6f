"""A real electra-serve process on loopback ports, started once per session and drained at the end."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.processes import terminate

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    process: subprocess.Popen
    http_port: int
    grpc_port: int
    repository: Path
    log_path: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 240.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout_s}s:\n{self.log()[-4000:]}")

    def stop(self, timeout_s: float = 60.0) -> int:
        return terminate(self.process, timeout_s)


def start_server(
    repository: Path, log_path: Path, *args: str, env: dict[str, str] | None = None, module: str = "server"
) -> ServerProcess:
    """Start `python -m server` (or another entry point taking its flags) on free loopback ports
    (not yet waited for)."""
    http_port, grpc_port = free_port(), free_port()
    command = [
        sys.executable, "-m", module, "--model-repository", str(repository),
        "--host", "127.0.0.1", "--http-port", str(http_port), "--grpc-port", str(grpc_port), *args,
    ]  # fmt: skip
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    handle = open(log_path, "w")  # noqa: SIM115 - the child owns it for its lifetime
    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=environment, cwd=ROOT)
    return ServerProcess(process, http_port, grpc_port, repository, log_path, env or {})


@pytest.fixture(scope="session")
def served_repository(
    tmp_path_factory: pytest.TempPathFactory, demo_repository: Path, export_model: Callable[..., Path]
) -> Path:
    """The demo models plus test models of other shapes, label sets and heads (linked, not copied).

    Names: demo-classify, demo-discriminator, demo-qa, demo-tag, and
    cls3 (3 labels), multilabel (multi-label head, 4 labels), qa-short (max_seq_len 64: long
    contexts need many windows), tag5 (5 labels, max_position_embeddings 48), disc-short
    (discriminator, max_position_embeddings 40).
    """
    repository = tmp_path_factory.mktemp("served")
    for model_dir in demo_repository.iterdir():
        if (model_dir / "manifest.json").is_file():
            (repository / model_dir.name).symlink_to(model_dir)
    extra = {
        "cls3": export_model("classify", labels=["contradiction", "entailment", "neutral"], seed=31),
        "multilabel": export_model(
            "classify", labels=["w", "x", "y", "z"], problem_type="multi_label_classification", seed=32
        ),
        "qa-short": export_model("qa", seed=33, max_position_embeddings=64),
        "tag5": export_model("tag", labels=["O", "B-A", "I-A", "B-B", "I-B"], seed=34, max_position_embeddings=48),
        "disc-short": export_model("discriminate", seed=35, max_position_embeddings=40),
    }
    for name, model_dir in extra.items():
        serve_as(model_dir, repository, name)
    return repository


def serve_as(model_dir: Path, repository: Path, name: str) -> Path:
    """An exported model in `repository` under another name: a copy of its manifest with the new
    name, its ONNX and tokenizer files hard-linked (the runtime refuses model files that resolve
    outside their directory, so no symlinks)."""
    target = repository / name
    target.mkdir()
    for item in model_dir.iterdir():
        if item.name != "manifest.json":
            os.link(item, target / item.name)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["name"] = name
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


@pytest.fixture(scope="session")
def server(served_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One electra-serve for the session's end-to-end tests (all models of `served_repository`)."""
    log_path = tmp_path_factory.mktemp("server-log") / "server.log"
    handle = start_server(served_repository, log_path, "--max-queue-delay-ms", "5")
    try:
        handle.wait_ready()
        yield handle
    finally:
        code = handle.stop()
        assert code == 0, f"server exited {code} on SIGTERM:\n{handle.log()[-3000:]}"
