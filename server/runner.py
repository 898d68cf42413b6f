"""One process, one event loop: uvicorn (REST) and grpc.aio (gRPC) side by side over one service.

SIGTERM/SIGINT: readiness turns false, new work is refused, every accepted request is answered
(bounded by --drain-timeout-s), then both servers stop and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

import uvicorn

from server.app import build_asgi
from server.core.service import InferenceService
from server.metrics import Metrics
from server.settings import Settings

log = logging.getLogger("electra.runner")


class _UvicornServer(uvicorn.Server):
    """uvicorn without its own signal handling: the runner owns shutdown (drain first)."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[override]
        yield


async def serve(settings: Settings, repository: Path) -> int:
    metrics = Metrics()
    service = InferenceService(settings, metrics)
    app = build_asgi(service)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.http_port,
        log_level=settings.log_level,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)),
    )
    http_server = _UvicornServer(config)

    from server.api.grpc_server import create_grpc_server

    grpc_server, health = create_grpc_server(service, settings)
    await grpc_server.start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    http_task = asyncio.create_task(http_server.serve(), name="http")
    load_task = asyncio.create_task(service.load(repository), name="load")
    health_task = asyncio.create_task(health.follow(service, stop), name="health")
    stop_task = asyncio.create_task(stop.wait(), name="stop")
    log.info(
        "electra-serve: http %s:%s, grpc %s:%s", settings.host, settings.http_port, settings.host, settings.grpc_port
    )

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

    log.info("draining (up to %.0fs)", settings.drain_timeout_s)
    await health.set_serving(False)
    await service.drain(settings.drain_timeout_s)
    await grpc_server.stop(grace=1.0)
    http_server.should_exit = True
    with contextlib.suppress(Exception):
        await asyncio.wait_for(http_task, timeout=settings.drain_timeout_s + 5)
    for task in (load_task, health_task, stop_task):
        task.cancel()
    log.info("stopped")
    return exit_code
