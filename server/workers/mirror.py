"""The API worker's side of the model owner: a mirror of its model table and a batcher that sends
rows to it.

`MirrorRegistry` holds this worker's models (the service's `ModelStore`): a model table rebuilt
from the owner's table (each version's manifest and tokenizer read from the same repository on
disk), so the service, the front ends and readiness work as in one process; loading and
unloading are asked of the owner. A version the owner retires stops taking requests here at once;
once the requests this worker holds on it are answered, the worker tells the owner, which frees it
only when every worker has.

`RemoteBatcher.submit` sends a request's rows to the owner's batcher for that version and waits
for their outputs; a cancelled request (client gone, deadline) is cancelled at the owner too.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec
import zmq

from server.core.batching import SubmitResult
from server.core.catalogue import ModelSlot, ModelTable, VersionStatus
from server.core.config import BatchPolicy
from server.core.errors import ErrorKind, ModelLoadError, ServeError
from server.core.loader import sha256_hex
from server.core.manifest import Manifest
from server.core.model import ModelVersion, State
from server.core.repository import VersionPolicy, scan, version_policy
from server.core.rows import Row, RowOutputs
from server.core.stats import ModelStats
from server.core.tasks import TASKS
from server.core.tokenizer import TokenizerPool
from server.workers import messages as m
from server.workers import wire
from server.workers.loopsocket import LoopSocket

log = logging.getLogger("electra.worker")

# The owner's table comes every half second: a worker that hears nothing for six of them turns not
# ready until the owner speaks again.
OWNER_SILENCE_S = 3.0

Submitted = tuple[float, float, list[RowOutputs]]  # queue seconds, inference seconds, each row's outputs


class OwnerGone(ServeError):
    def __init__(self) -> None:
        super().__init__(ErrorKind.UNAVAILABLE, "the model owner is not answering", retry_after_s=1.0)


class VersionView:
    """The owner's latest word on one loaded version, shared by its remote batcher and runtime."""

    def __init__(self, info: m.VersionInfo) -> None:
        self.info = info


class OwnerClient:
    """One DEALER socket to the owner. Submits of one turn of the event loop leave as one message;
    other requests (control, statistics) are matched to their answers by id."""

    def __init__(self, address: str, identity: str) -> None:
        self.address = address
        self.identity = identity
        socket: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.DEALER)
        socket.setsockopt(zmq.IDENTITY, identity.encode())
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(address)
        self._socket = socket
        self._link: LoopSocket | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[m.Reply]] = {}
        self._submitted: dict[int, asyncio.Future[Submitted]] = {}
        self._outbox: list[tuple[m.SubmittedRequest, Sequence[Row]]] = []
        self._cancels: list[int] = []
        self._flush_scheduled = False
        self.on_table: Callable[[m.Table], None] | None = None
        self.on_stats_query: Callable[[], list[dict[str, Any]]] | None = None
        self.last_heard = time.monotonic()
        self._handlers: dict[type[m.Message], Callable[[Any, list[zmq.Frame]], None]] = {
            m.Results: self._results,
            m.Errors: self._errors,
            m.Table: self._table,
            m.StatsQuery: self._stats_query,
            m.Reply: self._reply,
        }

    def start(self) -> None:
        self._link = LoopSocket(self._socket, self._on_message)

    def send(self, message: m.Message, *buffers: Any) -> None:
        """Without waiting: what the socket cannot take now waits in the link's queue."""
        if self._link is None:
            raise OwnerGone()
        self._link.send(wire.message_frames(message, *buffers))

    def next_id(self) -> int:
        return next(self._ids)

    def submit(
        self, model: str, version: str, deadline: float | None, rows: Sequence[Row]
    ) -> tuple[int, asyncio.Future[Submitted]]:
        request_id = next(self._ids)
        future: asyncio.Future[Submitted] = asyncio.get_running_loop().create_future()
        self._submitted[request_id] = future
        self._outbox.append((m.SubmittedRequest(request_id, model, version, deadline, len(rows)), rows))
        self._flush_soon()
        return request_id, future

    def cancel(self, request_id: int) -> None:
        if self._submitted.pop(request_id, None) is not None:
            self._cancels.append(request_id)
            self._flush_soon()

    def _flush_soon(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        outbox, self._outbox = self._outbox, []
        cancels, self._cancels = self._cancels, []
        if outbox:
            self.send(m.Submit([request for request, _ in outbox]), *wire.pack_rows([rows for _, rows in outbox]))
        if cancels:
            self.send(m.Cancel(cancels))

    async def request(self, message: m.Control | m.Stats, timeout_s: float | None = None) -> m.Reply:
        """Send a message whose id came from `next_id()` and wait for its Reply."""
        future: asyncio.Future[m.Reply] = asyncio.get_running_loop().create_future()
        self._waiting[message.id] = future
        try:
            self.send(message)
            if timeout_s is None:
                return await future
            async with asyncio.timeout(timeout_s):
                return await future
        finally:
            self._waiting.pop(message.id, None)

    def _on_message(self, frames: list[zmq.Frame]) -> None:
        self.last_heard = time.monotonic()
        try:
            message = m.decode_to_worker(wire.buffer(frames[0]))
        except msgspec.DecodeError as exc:
            log.error("a malformed message from the model owner: %s", exc)
            return
        self._handlers[type(message)](message, frames[1:])

    def _results(self, message: m.Results, frames: list[zmq.Frame]) -> None:
        results = message.results
        outputs = wire.unpack_outputs(message.spec, frames, [n for r in results for n in r.lengths])
        offset = 0
        for result in results:
            submitted = self._submitted.pop(result.id, None)
            count = len(result.lengths)
            if submitted is not None and not submitted.done():  # None: cancelled meanwhile
                submitted.set_result((result.queue_seconds, result.inference_seconds, outputs[offset : offset + count]))
            offset += count

    def _errors(self, message: m.Errors, frames: list[zmq.Frame]) -> None:
        for failed in message.errors:
            submitted = self._submitted.pop(failed.id, None)
            if submitted is not None and not submitted.done():
                submitted.set_exception(ServeError(ErrorKind[failed.kind], failed.message, failed.retry_after_s))

    def _table(self, message: m.Table, frames: list[zmq.Frame]) -> None:
        if self.on_table is not None:
            self.on_table(message)

    def _stats_query(self, message: m.StatsQuery, frames: list[zmq.Frame]) -> None:
        if self.on_stats_query is not None:
            self.send(m.StatsReply(message.query, self.on_stats_query()))

    def _reply(self, message: m.Reply, frames: list[zmq.Frame]) -> None:
        future = self._waiting.get(message.id)
        if future is not None and not future.done():
            future.set_result(message)

    def fail_pending(self) -> None:
        """Everything waiting for the owner gets its error now (it is gone)."""
        pending: list[asyncio.Future[Any]] = [*self._waiting.values(), *self._submitted.values()]
        for future in pending:
            if not future.done():
                future.set_exception(OwnerGone())
        self._submitted.clear()

    async def close(self) -> None:
        link, self._link = self._link, None
        self.fail_pending()
        if link is not None:
            link.close()
        else:
            self._socket.close(0)


class RemoteBatcher:
    """The owner's batcher of one version, as the service sees a batcher (`Batcher`)."""

    def __init__(self, client: OwnerClient, name: str, version: str, view: VersionView) -> None:
        self.client = client
        self.name = f"{name}:{version}"
        self._model, self._version = name, version
        self._view = view
        info = view.info
        self.policy = BatchPolicy(**info.policy) if info.policy else BatchPolicy()

    @property
    def healthy(self) -> bool:
        return self._view.info.ready and self._view.info.alive

    @property
    def alive(self) -> bool:
        return self._view.info.alive

    @property
    def executions(self) -> int:
        return self._view.info.executions

    @property
    def queue_depth(self) -> int:
        return self._view.info.queue_depth

    def check_capacity(self) -> None:
        """The owner refuses a full queue itself; this only saves tokenizing when it is known full."""
        if self._view.info.queue_depth >= self.policy.max_queue_size:
            raise ServeError(
                ErrorKind.OVERLOADED, f"model {self.name} is overloaded: its queue is full", retry_after_s=1.0
            )

    async def submit(self, rows: Sequence[Row], deadline: float | None = None) -> SubmitResult:
        request_id, future = self.client.submit(self._model, self._version, deadline, rows)
        try:
            queue_s, inference_s, outputs = await future
        except asyncio.CancelledError:
            self.client.cancel(request_id)  # its rows leave the owner's queue too
            raise
        return SubmitResult(outputs, queue_s, inference_s)

    def start(self) -> None:
        """The owner's batcher runs from the owner's start-up on."""

    async def stop(self, drain_timeout_s: float = 0.0) -> None:
        """The owner stops its batchers (after every worker drained)."""


class RemoteRuntime:
    """What `describe` and the v2 config read of a runtime (`RuntimeInfo`); models run at the owner."""

    def __init__(self, view: VersionView) -> None:
        self._view = view

    @property
    def precision(self) -> str:
        return self._view.info.precision

    @property
    def device(self) -> str:
        return self._view.info.device

    @property
    def providers(self) -> list[str]:
        return self._view.info.providers

    @property
    def sequence_outputs(self) -> tuple[str, ...]:
        return tuple(self._view.info.sequence_outputs)

    def close(self) -> None:
        """Nothing of the model is held in this process."""


class MirrorRegistry:
    """This worker's `ModelStore`: the owner's table mirrored, and the owner asked for the rest."""

    def __init__(
        self,
        client: OwnerClient,
        repository: Path,
        *,
        default_policy: VersionPolicy | None = None,
        unload_timeout_s: float = 30.0,
    ) -> None:
        self.client = client
        self.repository = Path(repository)
        self.default_policy = default_policy or VersionPolicy()
        self.unload_timeout_s = unload_timeout_s
        self.table = ModelTable()
        self._views: dict[tuple[str, str], VersionView] = {}
        self._tokenizers: dict[str, TokenizerPool] = {}
        self.owner_loaded = False  # the owner finished its start-up loading
        self.owner_draining = False
        self.load_error: str | None = None
        self._table_seen = asyncio.Event()  # the owner's start-up ended (loaded or failed)
        self._warmed = False
        self.epoch = -1
        self.stopping = False

    # -- ModelStore ------------------------------------------------------------------------

    @property
    def catalogue(self) -> ModelTable:
        return self.table

    @property
    def started(self) -> bool:
        """The owner loaded its models, this worker warmed its tokenizers, and the owner is heard."""
        heard = time.monotonic() - self.client.last_heard <= OWNER_SILENCE_S
        return self.owner_loaded and self._warmed and heard

    @property
    def heap_tuned(self) -> bool:
        return False  # no model runs in this process: nothing to trim for

    async def start(self, names: list[str] | None, warm: Callable[[], None]) -> None:
        """Wait for the owner's start-up (it loads `names`), then warm this worker's tokenizers."""
        await self._table_seen.wait()
        if self.load_error:
            raise RuntimeError(self.load_error)
        await asyncio.to_thread(warm)
        self._warmed = True

    def in_repository(self, name: str) -> bool:
        return name in self.table.slots or name in scan(self.repository, self.default_policy)

    def version_policy(self, name: str) -> dict[str, Any]:
        return version_policy(self.repository, self.default_policy, name).describe()

    async def load(self, name: str, *, retry_failed: bool = True) -> list[str]:
        result = await self._control("load", name=name)
        return list(result)

    async def unload(self, name: str) -> None:
        await self._control("unload", name=name)

    async def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        return list(await self._control("index", ready=ready_only))

    async def cluster_stats(self) -> ModelStats | None:
        """Every worker's statistics summed (each worker counts the requests it answered)."""
        answer = await self.client.request(m.Stats(self.client.next_id()), timeout_s=10)
        merged = ModelStats(self.table.executions)
        merged.merge(answer.stats)
        return merged

    async def stop(self, timeout_s: float) -> None:
        """The owner stops the batchers (after every worker has drained)."""
        self.stopping = True

    async def _control(self, action: Literal["load", "unload", "index"], name: str = "", ready: bool = False) -> Any:
        control = m.Control(self.client.next_id(), action, name, ready)
        answer = await self.client.request(control, timeout_s=600)
        if answer.ok:
            return answer.result
        if answer.load_error:
            raise ModelLoadError(answer.message)
        raise ServeError(ErrorKind[answer.kind], answer.message, answer.retry_after_s)

    # -- the owner's table -----------------------------------------------------------------

    def apply(self, table: m.Table) -> None:
        if table.epoch <= self.epoch:
            return
        self.epoch = table.epoch
        self.owner_loaded, self.owner_draining, self.load_error = table.loaded, table.draining, table.load_error
        if table.loaded or table.load_error:
            self._table_seen.set()
        slots = self.table.slots
        for name, model in table.models.items():
            slot = self.table.slot(name)
            slot.status = {v: VersionStatus(State(state), reason) for v, (state, reason) in model.status.items()}
            for version, info in model.versions.items():
                current = slot.loaded.get(version)
                view = self._views.get((name, version))
                if current is not None and view is not None and str(current.path) == info.path and not current.retiring:
                    view.info = info
                    if info.retiring:
                        self._retire_here(slot, current)
                    continue
                if info.retiring:
                    continue
                try:
                    fresh = self._version(name, version, info)
                except (OSError, ValueError, ModelLoadError) as exc:
                    log.error("model %s version %s: cannot mirror it here: %s", name, version, exc)
                    continue
                if current is not None:
                    self._retire_here(slot, current)
                slot.loaded[version] = fresh
            for version in [v for v in slot.loaded if v not in model.versions]:
                self._retire_here(slot, slot.loaded[version])
        for name in [n for n in slots if n not in table.models]:
            for gone in list(slots[name].loaded.values()):
                self._retire_here(slots[name], gone)
        self.table.changed()

    def _version(self, name: str, version: str, info: m.VersionInfo) -> ModelVersion:
        path = Path(info.path)
        manifest = Manifest.read(path)
        data = (path / manifest.tokenizer).read_bytes()
        digest = sha256_hex(data)
        pool = self._tokenizers.get(digest) or self._tokenizers.setdefault(digest, TokenizerPool(data.decode("utf-8")))
        view = self._views[(name, version)] = VersionView(info)
        return ModelVersion(
            name=name,
            version=version,
            path=path,
            manifest=manifest,
            task=TASKS[manifest.task],
            tokenizers=pool,
            runtime=RemoteRuntime(view),
            batcher=RemoteBatcher(self.client, name, version, view),
        )

    def _retire_here(self, slot: ModelSlot, version: ModelVersion) -> None:
        """No new request here; tell the owner once this worker's accepted ones are answered."""
        if version.retiring:
            return
        version.retiring = True
        asyncio.get_running_loop().create_task(self._release(slot, version))

    async def _release(self, slot: ModelSlot, version: ModelVersion) -> None:
        await version.wait_released(self.unload_timeout_s)
        if slot.loaded.get(version.version) is version:
            del slot.loaded[version.version]
        with contextlib.suppress(Exception):
            self.client.send(m.Release(version.name, version.version, str(version.path)))


def worker_identity(index: int) -> str:
    return f"w{index}-{os.getpid()}"
