"""The servers under test as child processes on loopback ports: started, waited for, paused and
stopped. One harness for the test suite (tests/e2e/conftest.py re-exports it) and the benches; it
imports no pytest and reaches a server only through its command line, its ports and its log.

    handle = start_server(repository, log_path, "--max-queue-delay-ms", "5")  # launched
    handle.wait_ready()                                                        # /health/ready 200
    handle.stop()                                                              # SIGTERM: a drain

The benches build a handle first (`electra_server`, `naive_server`: the command, not yet run) and
`start()` it (launch, wait, and stop again if it never becomes ready), optionally pinned to a set
of cores (taskset).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]  # the checkout whose server `start_server` runs
HOST = "127.0.0.1"
KILL_WAIT_S = 10.0  # after SIGKILL, how long to wait for the exit


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def pinned(command: Sequence[str], cores: Sequence[int] | None) -> list[str]:
    """The command prefixed with `taskset -c` when cores are given."""
    if not cores:
        return list(command)
    return ["taskset", "-c", ",".join(str(c) for c in cores), *command]


def terminate(process: subprocess.Popen[bytes], timeout_s: float, kill_wait_s: float = KILL_WAIT_S) -> int:
    """SIGTERM (a graceful stop), then SIGKILL if it has not exited within `timeout_s`; the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(kill_wait_s)
    return process.returncode


@dataclass
class ServerProcess:
    """A server on loopback ports: made with its process already running (`start_server`, or a
    test's own Popen), or with the `command` that `launch()` / `start()` runs."""

    process: subprocess.Popen[bytes] | None
    http_port: int
    grpc_port: int | None = None
    repository: Path | None = None
    log_path: Path | None = None  # its stdout and stderr (None: discarded)
    extra_env: dict[str, str] = field(default_factory=dict)  # on top of this process's environment
    _: KW_ONLY
    name: str = "electra-serve"
    command: list[str] = field(default_factory=list)
    source_root: Path | None = None  # a checkout to run from: the working directory, first on PYTHONPATH
    cwd: Path | None = None  # the working directory, when not source_root's
    ready_path: str = "/health/ready"
    # A session of its own: a Ctrl-C of the caller reaches it only through stop().
    own_session: bool = False
    # Signal the whole process group on pause and stop, and make sure none of it outlives the
    # server: for servers that fork workers (--workers, LitServe, Triton and its backend stubs).
    group: bool = False
    group_grace_s: float = 5.0  # how long the group's other members get after SIGTERM
    paused: bool = field(default=False, init=False)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        # Under taskset the child execs the server, so the pid is the server's own.
        return self.process.pid

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def launch(self) -> ServerProcess:
        """Run `command`, not waiting for it (see `wait_ready`)."""
        env = dict(os.environ)
        if self.source_root is not None:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.source_root), env.get("PYTHONPATH")) if p)
        env.update(self.extra_env)
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115 - the child's
        try:
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.cwd or self.source_root,
                start_new_session=self.own_session or self.group,  # killpg needs the group to be its own
            )
        finally:
            if not isinstance(log, int):
                log.close()  # the child holds its own copy
        return self

    def wait_ready(self, timeout_s: float = 240.0, log_tail: int = 4000) -> None:
        """Until `ready_path` answers 200. RuntimeError if the process exits first or time runs out,
        with the log's last `log_tail` characters (0: the log's path)."""
        assert self.process is not None, "not started"
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.process.returncode}{self._tail(log_tail)}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.url + self.ready_path).status_code == 200:
                        return
                time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f}s{self._tail(log_tail)}")

    def _tail(self, chars: int) -> str:
        if chars:
            return f":\n{self.log()[-chars:]}"
        return f"; see {self.log_path}" if self.log_path else ""

    def start(self, timeout_s: float = 300.0) -> ServerProcess:
        """launch() and wait_ready(); stopped again (what it forked too) if it never gets ready."""
        self.launch()
        try:
            self.wait_ready(timeout_s, log_tail=0)
        except BaseException:
            self.stop()
            raise
        return self

    def pause(self) -> None:
        """Stop the server (its whole group with `group`) until `resume`: a server that polls while
        idle then takes nothing from the one being measured beside it."""
        self._signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        self.paused = False

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM (a graceful drain), SIGKILL past `timeout_s`; with `group`, then whatever is left
        of the group. The exit code (None: never started); stopping twice is harmless."""
        if self.process is None:
            return None
        if self.paused:
            self.resume()  # a stopped process acts on SIGTERM only once continued
        if not self.group:
            return terminate(self.process, timeout_s)
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait(KILL_WAIT_S)
        self._end_group()
        return self.process.returncode

    def _signal(self, sig: signal.Signals) -> None:
        assert self.process is not None, "not started"
        if self.group:
            # start_new_session made the server its group's leader: the group id is its pid.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
        else:
            self.process.send_signal(sig)

    def _end_group(self) -> None:
        """Whatever is left of the group once its leader is gone: asked to stop, then killed."""
        assert self.process is not None
        pgid = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
            for sig, wait_s in ((None, self.group_grace_s), (signal.SIGKILL, 2.0)):
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


def server_command(repository: Path, http_port: int, grpc_port: int, *args: str, module: str = "server") -> list[str]:
    """`python -m server` (or another entry point taking its flags) on the given loopback ports."""
    return [
        sys.executable, "-m", module, "--model-repository", str(repository),
        "--host", HOST, "--http-port", str(http_port), "--grpc-port", str(grpc_port), *args,
    ]  # fmt: skip


def start_server(
    repository: Path, log_path: Path, *args: str, env: dict[str, str] | None = None, module: str = "server"
) -> ServerProcess:
    """This checkout's `python -m server` (or another entry point taking its flags) on free loopback
    ports, launched from the checkout; not yet waited for (`wait_ready`)."""
    http_port, grpc_port = free_port(), free_port()
    return ServerProcess(
        None, http_port, grpc_port, repository, log_path, env or {},
        command=server_command(repository, http_port, grpc_port, *args, module=module), source_root=ROOT,
    ).launch()  # fmt: skip


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
    """The benches' electra-serve, not yet started (`start()`): request logs off, pinned to `cores`.
    source_root: run the server from another checkout (an A/B comparison of two versions)."""
    http_port, grpc_port = free_port(), free_port()
    args = [
        "--device", device, "--log-level", "warning", *(["--models", ",".join(models)] if models else []),
        *extra_args,
    ]  # fmt: skip
    return ServerProcess(
        None,
        http_port,
        grpc_port,
        repository,
        log_path,
        name="electra-serve" if source_root is None else f"electra-serve ({source_root})",
        command=pinned(server_command(repository, http_port, grpc_port, *args), cores),
        source_root=Path(source_root) if source_root is not None else None,
        own_session=True,
        # --workers N: the owner's worker processes must not outlive it, even when it is killed.
        group=any(a == "--workers" or a.startswith("--workers=") for a in extra_args),
    )


def naive_server(
    checkpoint: Path, *, device: str = "cpu", cores: Sequence[int] | None = None, log_path: Path | None = None
) -> ServerProcess:
    """The naive baseline (loadtests/naive_server.py), not yet started."""
    port = free_port()
    command = [
        sys.executable, "-m", "loadtests.naive_server", "--model", str(checkpoint), "--port", str(port),
        "--device", device,
    ]  # fmt: skip
    return ServerProcess(
        None, port, log_path=log_path, name="naive", command=pinned(command, cores), ready_path="/health",
        own_session=True,
    )  # fmt: skip


def offered_protocols(server: ServerProcess, timeout_s: float = 3.0) -> dict[str, bool]:
    """Which protocols the running electra-serve answers: REST always; typed gRPC and KServe v2
    gRPC are read from server reflection, /v2 over HTTP from `GET /v2`."""
    grpc_address = server.grpc_target if server.grpc_port else None
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
