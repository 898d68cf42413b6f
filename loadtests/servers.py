"""Start and stop the servers under test as child processes on loopback ports, optionally pinned
to a set of cores (taskset), and wait until they answer."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def pinned(command: Sequence[str], cores: Sequence[int] | None) -> list[str]:
    """The command prefixed with `taskset -c` when cores are given."""
    if not cores:
        return list(command)
    return ["taskset", "-c", ",".join(str(c) for c in cores), *command]


@dataclass
class ServerProcess:
    name: str
    command: list[str]
    http_port: int
    grpc_port: int | None = None
    ready_path: str = "/health/ready"
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    cwd: Path | None = None
    # Signal the whole process group on stop, and make sure none of it outlives the server:
    # for servers that fork workers (LitServe, Triton and its backend stubs).
    group: bool = False
    group_grace_s: float = 5.0  # how long the group's other members get after SIGTERM
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        # Under taskset the child execs the server, so the pid is the server's own.
        return self.process.pid

    def start(self, timeout_s: float = 300.0) -> ServerProcess:
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            self.command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            cwd=self.cwd,
            start_new_session=True,  # a Ctrl-C of the bench reaches it only through stop()
        )
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    self.stop()  # what it forked, if anything
                    raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self.log_path}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.url + self.ready_path).status_code == 200:
                        return self
                time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"{self.name} was not ready within {timeout_s:.0f}s; see {self.log_path}")

    def pause(self) -> None:
        """Stop the server (its whole group with `group`) until `resume`: a server that polls while
        idle then takes nothing from the one being measured beside it."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is not None:
            self._end_group()
            return self.process.returncode
        self.resume()  # a paused server would not act on SIGTERM
        self._signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            code = self.process.wait(5)
        self._end_group()
        return code

    def _signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        if self.group:
            # start_new_session made the server its group's leader: the group id is its pid.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
        else:
            self.process.send_signal(sig)

    def _end_group(self) -> None:
        """Whatever is left of the group once its leader is gone: asked to stop, then killed."""
        if not self.group or self.process is None:
            return
        grace_s = self.group_grace_s
        pgid = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
            for sig, wait_s in ((None, grace_s), (signal.SIGKILL, 2.0)):
                if sig is not None:
                    os.killpg(pgid, sig)
                deadline = time.monotonic() + wait_s
                while time.monotonic() < deadline:
                    os.killpg(pgid, 0)  # raises once no member is left (killed ones until reaped)
                    time.sleep(0.05)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def electra_server(
    repository: Path,
    *,
    device: str = "cpu",
    models: Sequence[str] | None = None,
    extra_args: Sequence[str] = (),
    cores: Sequence[int] | None = None,
    log_path: Path | None = None,
    source_root: Path | None = None,
) -> ServerProcess:
    """source_root: run the server from another checkout (an A/B comparison of two versions)."""
    http_port, grpc_port = free_port(), free_port()
    command = [
        sys.executable,
        "-m",
        "server",
        "--model-repository",
        str(repository),
        "--host",
        HOST,
        "--http-port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
        "--device",
        device,
        "--log-level",
        "warning",
        *(["--models", ",".join(models)] if models else []),
        *extra_args,
    ]
    env = {}
    if source_root is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(Path(source_root).resolve()), os.environ.get("PYTHONPATH", "")])
    return ServerProcess(
        "electra-serve" if source_root is None else f"electra-serve ({source_root})",
        pinned(command, cores),
        http_port,
        grpc_port,
        env=env,
        log_path=log_path,
        cwd=Path(source_root) if source_root is not None else None,
        # --workers N: the owner's worker processes must not outlive it, even when it is killed.
        group=any(a == "--workers" or a.startswith("--workers=") for a in extra_args),
    )


def naive_server(
    checkpoint: Path, *, device: str = "cpu", cores: Sequence[int] | None = None, log_path: Path | None = None
) -> ServerProcess:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "loadtests.naive_server",
        "--model",
        str(checkpoint),
        "--port",
        str(port),
        "--device",
        device,
    ]
    return ServerProcess("naive", pinned(command, cores), port, ready_path="/health", log_path=log_path)


def offered_protocols(server: ServerProcess, timeout_s: float = 3.0) -> dict[str, bool]:
    """Which protocols the running electra-serve answers: REST always; typed gRPC and KServe v2
    gRPC are read from server reflection, /v2 over HTTP from `GET /v2`."""
    grpc_address = f"{HOST}:{server.grpc_port}" if server.grpc_port else None
    return offered_protocols_at(server.url, grpc_address, timeout_s)


def offered_protocols_at(url: str, grpc_address: str | None, timeout_s: float = 3.0) -> dict[str, bool]:
    """offered_protocols for a server this process did not start: its REST base URL and gRPC host:port."""
    found = {"rest": True, "grpc": False, "v2-http": False, "v2-grpc": False}
    with contextlib.suppress(httpx.HTTPError):
        found["v2-http"] = httpx.get(url + "/v2", timeout=timeout_s).status_code == 200
    if grpc_address:
        services = grpc_services(grpc_address, timeout_s)
        found["grpc"] = "electra.v1.ElectraService" in services
        found["v2-grpc"] = "inference.GRPCInferenceService" in services
    return found


def grpc_services(address: str, timeout_s: float = 3.0) -> set[str]:
    """Service names listed by gRPC server reflection (empty when it does not answer)."""
    try:
        import grpc
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    except ImportError:
        return set()
    try:
        with grpc.insecure_channel(address) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            for response in stub.ServerReflectionInfo(iter([request]), timeout=timeout_s):
                return {s.name for s in response.list_services_response.service}
    except grpc.RpcError:
        return set()
    return set()
