"""One API worker of `electra-serve --workers N` (started by the supervisor, never by hand): REST
and gRPC on the shared ports (SO_REUSEPORT), tokenizing and decoding here, every model run at the
model owner. It takes the server's own flags; the owner's address comes in ELECTRA_INTERNAL_OWNER.

SIGTERM: readiness turns false, accepted requests are answered, the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from server.api.repository import RepositoryControl
from server.core.service import InferenceService
from server.logs import configure
from server.metrics import Metrics
from server.runner import Security, listening_socket, run_front, stop_on_signals
from server.settings import Settings, load_settings
from server.workers import messages as m
from server.workers.mirror import MirrorRegistry, worker_identity
from server.workers.owner_client import OwnerClient
from server.workers.wire import INDEX_ENV, OWNER_ENV

log = logging.getLogger("electra.worker")


async def watch_owner(client: OwnerClient, stop: asyncio.Event, owner_pid: int) -> None:
    """The owner is this worker's parent. Gone (killed, crashed): every waiting request is answered
    503 and the worker drains and exits, freeing the ports. (Silent, its loop stuck: the mirror turns
    not ready, so that load balancers send requests elsewhere; deadlines still bound what waits.)"""
    while not stop.is_set():
        await asyncio.sleep(0.5)
        if os.getppid() != owner_pid:
            log.error("the model owner (pid %d) is gone: answering what waits with 503 and stopping", owner_pid)
            client.fail_pending()
            stop.set()
            return


async def run_worker(settings: Settings, address: str, index: int) -> int:
    assert settings.model_repository is not None
    security = Security.from_settings(settings)
    stop = stop_on_signals(security)
    client = OwnerClient(address, worker_identity(index))
    registry = MirrorRegistry(
        client, settings.model_repository, default_policy=settings.policy(), unload_timeout_s=settings.drain_timeout_s
    )
    metrics = Metrics()
    service = InferenceService(settings.core_config(), registry, metrics)
    client.on_table = registry.apply
    owner_pid = os.getppid()
    client.on_stats_query = service.stats.snapshot
    client.start()
    client.send(m.Hello(os.getpid()))

    watchdog = asyncio.get_running_loop().create_task(watch_owner(client, stop, owner_pid), name="owner-watch")
    try:
        return await run_front(
            settings, service, lambda: (metrics.exposition(), metrics.content_type),
            RepositoryControl(registry, settings.model_control_mode), security, stop,
            startup=service.start(settings.start_models()),
            http_socket=listening_socket(settings.host, settings.http_port),
        )  # fmt: skip
    finally:
        watchdog.cancel()
        await client.close()


def main() -> int:
    settings = load_settings(sys.argv[1:])
    index = int(os.environ.get(INDEX_ENV, "0"))
    configure(settings.log_level, settings.log_format, process=f"w{index}")
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(run_worker(settings, os.environ[OWNER_ENV], index))


if __name__ == "__main__":
    sys.exit(main())
