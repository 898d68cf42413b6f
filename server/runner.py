"""One process, one event loop: uvicorn (REST) and grpc.aio (gRPC) side by side over one service
(built by `server.assembly.assemble`).

SIGTERM/SIGINT: readiness turns false, new work is refused, every accepted request is answered,
then both servers stop and the process exits 0, all within --drain-timeout-s.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import uvicorn

from server.api.grpc.auth import GrpcAuth
from server.api.grpc.server import HealthReporter, create_grpc_server
from server.api.http.auth import http_guard
from server.api.repository import RepositoryControl
from server.api.security import ApiKeys
from server.api.tls import Tls, TlsFiles
from server.app import build_asgi
from server.assembly import Assembly, assemble
from server.core.loader import RuntimeFactory
from server.core.registry import ModelRegistry
from server.core.service import InferenceService
from server.settings import Settings
from server.state_file import remove_state, write_state

log = logging.getLogger("electra.runner")


class _UvicornServer(uvicorn.Server):
    """uvicorn without its own signal handling: the runner owns shutdown (drain first)."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


async def poll_repository(registry: ModelRegistry, period_s: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), period_s)
        if stop.is_set():
            return
        try:
            await registry.poll()
        except Exception:  # one bad scan must not end polling
            log.exception("polling the model repository failed")


@dataclass
class Security:
    """API keys and TLS certificates, both read again when their files change."""

    keys: ApiKeys | None = None
    tls: Tls | None = None
    protect_probes: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> Security:
        keys = ApiKeys(settings.api_keys_file) if settings.api_keys_file else None
        tls = None
        if settings.tls_cert is not None and settings.tls_key is not None:
            tls = Tls(TlsFiles(settings.tls_cert, settings.tls_key, settings.tls_client_ca))
        return cls(keys, tls, settings.auth_probes)

    def reload(self, force: bool = False) -> None:
        if self.keys is not None:
            self.keys.reload(force)
        if self.tls is not None:
            self.tls.reload(force)

    async def watch(self, period_s: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), period_s)
            try:
                self.reload()
            except Exception:  # a bad file must not end the watching
                log.exception("reloading the API keys or TLS files failed")


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound with SO_REUSEPORT, so that every API worker listens on the same port and
    the kernel spreads connections between them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def build_http_server(
    settings: Settings, service: InferenceService, exposition: Callable[[], tuple[bytes, str]],
    control: RepositoryControl, security: Security,
) -> uvicorn.Server:  # fmt: skip
    guard = http_guard(security.keys, security.protect_probes) if security.keys is not None else None
    app = build_asgi(service, settings.http_limits(), exposition, control, guard)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.http_port,
        log_level=settings.log_level,
        log_config=None,  # server.logs configured logging for the whole process
        access_log=False,
        lifespan="off",
        limit_concurrency=settings.http_max_connections,
        timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)),
    )
    config.load()
    if security.tls is not None:
        # uvicorn serves from this context; a certificate reload changes it in place.
        config.ssl = security.tls.http_context()
    return _UvicornServer(config)


def build_grpc_server(
    settings: Settings, service: InferenceService, control: RepositoryControl, security: Security,
    reuse_port: bool = False,
) -> tuple[grpc.aio.Server, HealthReporter]:  # fmt: skip
    interceptors: list[grpc.aio.ServerInterceptor] = (
        [GrpcAuth(security.keys, security.protect_probes)] if security.keys is not None else []
    )
    server, health = create_grpc_server(
        service,
        max_receive_bytes=settings.max_request_bytes,
        max_send_bytes=settings.grpc_max_message_bytes,
        max_concurrent_rpcs=settings.grpc_max_concurrent_rpcs,
        control=control,
        interceptors=interceptors,
        reuse_port=reuse_port,
    )
    address = f"{settings.host}:{settings.grpc_port}"
    if security.tls is not None:
        server.add_secure_port(address, security.tls.grpc_credentials())
    else:
        server.add_insecure_port(address)
    return server, health


def stop_on_signals(security: Security) -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: security.reload(force=True))
    return stop


async def serve(
    settings: Settings,
    repository: Path,
    security: Security | None = None,
    *,
    runtime_factory: RuntimeFactory | None = None,
    stop: asyncio.Event | None = None,
    assembled: Callable[[Assembly], None] | None = None,
) -> int:
    """One process does everything. Serves until SIGTERM/SIGINT, or until `stop` is set (then no
    signal handler is installed: for servers run inside another program, tests among them, which
    `assembled` hands the parts)."""
    parts = assemble(settings, repository, runtime_factory)
    if assembled is not None:
        assembled(parts)
    security = security or Security.from_settings(settings)
    stop = stop or stop_on_signals(security)
    background = []
    if settings.model_control_mode == "poll":
        background.append(poll_repository(parts.registry, settings.repository_poll_secs, stop))
    metrics = parts.metrics
    return await run_front(
        settings, parts.service, lambda: (metrics.exposition(), metrics.content_type),
        RepositoryControl(parts.registry, settings.model_control_mode), security, stop,
        startup=parts.service.start(settings.start_models()), background=background,
    )  # fmt: skip


async def run_front(
    settings: Settings,
    service: InferenceService,
    exposition: Callable[[], tuple[bytes, str]],
    control: RepositoryControl,
    security: Security,
    stop: asyncio.Event,
    *,
    startup: Awaitable[None],
    background: Sequence[Awaitable[None]] = (),
    http_socket: socket.socket | None = None,
) -> int:
    """REST and gRPC over one service until `stop`; 1 when start-up failed or the HTTP server did."""
    http_server = build_http_server(settings, service, exposition, control, security)
    try:
        grpc_server, health = build_grpc_server(
            settings, service, control, security, reuse_port=http_socket is not None
        )
        await grpc_server.start()
    except RuntimeError as exc:  # grpc's "Failed to bind": the port was taken after the start's check
        if inspect.iscoroutine(startup):
            startup.close()
        log.error("cannot serve gRPC on %s:%s: %s", settings.host, settings.grpc_port, exc)
        return 1
    sockets = [http_socket] if http_socket is not None else None
    http_task = asyncio.create_task(http_server.serve(sockets=sockets), name="http")
    load_task = asyncio.ensure_future(startup)
    stop_task = asyncio.create_task(stop.wait(), name="stop")
    tasks = [
        asyncio.create_task(health.follow(service, stop), name="health"),
        *([asyncio.create_task(_publish_state(settings, http_server), name="state")] if sockets is None else []),
        asyncio.create_task(security.watch(settings.secrets_poll_secs, stop), name="secrets"),
        *(asyncio.ensure_future(b) for b in background),
    ]
    scheme = "https" if security.tls is not None else "http"
    log.info(
        "electra-serve: %s %s:%s, grpc%s %s:%s%s", scheme, settings.host, settings.http_port,
        " (TLS)" if security.tls else "", settings.host, settings.grpc_port,
        ", API keys required" if security.keys else "",
    )  # fmt: skip

    done, _ = await asyncio.wait({http_task, stop_task, load_task}, return_when=asyncio.FIRST_COMPLETED)
    exit_code = 0
    if load_task in done and load_task.exception() is not None:
        log.error("no models could be served: %s", load_task.exception())
        exit_code = 1
    elif load_task in done:
        done, _ = await asyncio.wait({http_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    if http_task in done and http_task.exception() is not None:
        log.error("http server failed: %s", http_task.exception())
        exit_code = 1

    await shutdown(settings.drain_timeout_s, service, health, grpc_server, http_server, http_task)
    for task in (load_task, stop_task, *tasks):
        task.cancel()
    remove_state(settings)
    log.info("stopped")
    return exit_code


async def _publish_state(settings: Settings, http_server: uvicorn.Server) -> None:
    """The state file once the HTTP port listens (port 0: the one the kernel chose)."""
    while not http_server.started:
        await asyncio.sleep(0.05)
    port = settings.http_port or http_server.servers[0].sockets[0].getsockname()[1]
    write_state(settings, port, settings.grpc_port)


async def shutdown(
    budget_s: float,
    service: InferenceService,
    health: HealthReporter,
    grpc_server: grpc.aio.Server,
    http_server: uvicorn.Server,
    http_task: asyncio.Task[None],
) -> None:
    """One deadline for the whole shutdown (a pod's grace period is sized on it): the accepted work,
    then gRPC's in-flight calls, then uvicorn's connections, each given what is left."""
    deadline = time.monotonic() + budget_s
    log.info("draining (up to %.0fs)", budget_s)
    await health.set_serving(False)
    await service.drain(budget_s)
    await grpc_server.stop(grace=max(0.0, deadline - time.monotonic()))
    http_server.config.timeout_graceful_shutdown = max(0.1, deadline - time.monotonic())  # type: ignore[assignment]
    http_server.should_exit = True
    with contextlib.suppress(Exception):
        await asyncio.wait_for(http_task, timeout=max(0.5, deadline - time.monotonic()) + 1)
