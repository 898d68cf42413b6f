"""`electra-serve --workers N`: this process owns the models (loader, registry, batchers, runtimes:
`ModelOwner`) and runs N API worker processes (`server.workers.worker`) that share the HTTP and
gRPC ports and send their rows here over a local ZeroMQ socket. Prometheus metrics are written by
every process into one directory and summed by whichever worker is scraped.

A worker that dies is started again (its queued work is cancelled here; its clients' connections
broke with it, so they got an error, never silence). SIGTERM: the workers drain (readiness false,
accepted requests answered) and exit, then the batchers stop, all within --drain-timeout-s.
SIGHUP goes to the workers (they reload API keys and certificates).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from server.assembly import assemble
from server.ports import PortInUse, check_ports_free, free_port
from server.runner import poll_repository
from server.settings import Settings
from server.state_file import remove_state, write_state
from server.workers.owner import ModelOwner
from server.workers.wire import INDEX_ENV, OWNER_ENV

log = logging.getLogger("electra.supervisor")
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)


class Workers:
    def __init__(self, settings: Settings, argv: list[str], owner: ModelOwner, address: str) -> None:
        self.settings = settings
        self.argv = argv
        self.owner = owner
        self.address = address
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self.stopping = False
        self.restarts = 0

    async def keep(self, index: int) -> None:
        """Run worker `index`, and start it again whenever it ends while the server is not stopping."""
        failures = 0
        while not self.stopping:
            started = time.monotonic()
            env = {**os.environ, OWNER_ENV: self.address, INDEX_ENV: str(index)}
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "server.workers.worker", *self.argv, env=env, start_new_session=False
            )
            self.processes[index] = process
            code = await process.wait()
            self.owner.worker_gone(f"w{index}-{process.pid}", expected=self.stopping)
            _mark_dead(process.pid)
            if self.stopping:
                return
            self.restarts += 1
            failures = failures + 1 if time.monotonic() - started < 10 else 0
            delay = RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)]
            log.error(
                "API worker %d (pid %d) exited with %s: starting it again in %.1fs", index, process.pid, code, delay
            )
            await asyncio.sleep(delay)

    def signal_all(self, sig: int) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(sig)

    async def stop(self, timeout_s: float) -> None:
        self.stopping = True
        self.signal_all(signal.SIGTERM)
        running = [p.wait() for p in self.processes.values() if p.returncode is None]
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*running)
        except TimeoutError:
            log.warning("API workers still running after %.0fs: killing them", timeout_s)
            self.signal_all(signal.SIGKILL)
            await asyncio.gather(*(p.wait() for p in self.processes.values()))


def _mark_dead(pid: int) -> None:
    """A dead process's live gauges leave the sums (its counters stay: they count what happened)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]  # prometheus_client is untyped here


async def supervise(settings: Settings, repository: Path, argv: list[str]) -> int:
    socket_dir = tempfile.mkdtemp(prefix="electra-owner-")
    address = f"ipc://{socket_dir}/owner.sock"
    http_port = settings.http_port or free_port(settings.host)
    grpc_port = settings.grpc_port or free_port(settings.host)
    try:
        check_ports_free(settings.host, http_port, grpc_port)
    except PortInUse as exc:
        log.error("%s", exc)
        return 1
    worker_argv = [*argv, "--model-repository", str(repository), "--http-port", str(http_port),
                   "--grpc-port", str(grpc_port)]  # fmt: skip
    parts = assemble(settings, repository)
    owner = ModelOwner(parts.registry, address)
    workers = Workers(settings, worker_argv, owner, address)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: workers.signal_all(signal.SIGHUP))

    async def load() -> None:
        try:
            # The workers warm their own tokenizers: nothing to warm in the owner.
            await parts.registry.start(settings.start_models(), warm=lambda: None)
        except Exception as exc:
            log.error("no models could be served: %s", exc)
            stop.set()
        await owner.publish(force=True)

    async def poll() -> None:
        await poll_repository(parts.registry, settings.repository_poll_secs, stop)

    tasks = [asyncio.create_task(owner.run(), name="owner"), asyncio.create_task(load(), name="load")]
    tasks += [asyncio.create_task(workers.keep(i), name=f"worker-{i}") for i in range(settings.workers)]
    if settings.model_control_mode == "poll":
        tasks.append(asyncio.create_task(poll(), name="poll"))
    log.info(
        "electra-serve: %d API workers on http %s:%d and grpc %s:%d, one model owner", settings.workers,
        settings.host, http_port, settings.host, grpc_port,
    )  # fmt: skip
    write_state(settings, http_port, grpc_port)
    await stop.wait()

    deadline = time.monotonic() + settings.drain_timeout_s
    log.info("draining (up to %.0fs)", settings.drain_timeout_s)
    owner.draining = True
    await owner.publish(force=True)
    await workers.stop(max(0.5, deadline - time.monotonic()))
    await parts.registry.stop(max(0.1, deadline - time.monotonic()))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    owner.close()
    remove_state(settings)
    with contextlib.suppress(OSError):
        os.unlink(f"{socket_dir}/owner.sock")
        os.rmdir(socket_dir)
    log.info("stopped")
    return 1 if parts.registry.load_error else 0
