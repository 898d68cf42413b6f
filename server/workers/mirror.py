"""The API worker's side of the model owner: a mirror of its model table and a batcher that sends
rows to it.

`MirrorRegistry` is a `ModelRegistry` whose slots are rebuilt from the owner's table (each
version's manifest and tokenizer read from the same repository on disk), so the service, the
front ends and readiness work unchanged; loading and unloading are asked of the owner. A version
the owner retires stops taking requests here at once; once the requests this worker holds on it
are answered, the worker tells the owner, which frees it only when every worker has.

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
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import zmq

from server.core.batching import SubmitResult
from server.core.config import BatchPolicy
from server.core.errors import ErrorKind, ModelLoadError, ServeError
from server.core.loader import sha256_hex
from server.core.manifest import Manifest
from server.core.model import ModelVersion, State
from server.core.registry import ModelRegistry, ModelSlot, VersionStatus
from server.core.repository import VersionPolicy
from server.core.rows import Row
from server.core.stats import ModelStats
from server.core.tasks import TASKS
from server.core.tokenizer import TokenizerPool
from server.workers import wire
from server.workers.loopsocket import LoopSocket

log = logging.getLogger("electra.worker")


class OwnerGone(ServeError):
    def __init__(self) -> None:
        super().__init__(ErrorKind.UNAVAILABLE, "the model owner is not answering", retry_after_s=1.0)


@dataclass
class VersionInfo:
    """What the owner says of one loaded version."""

    path: str
    ready: bool = True
    alive: bool = True
    retiring: bool = False
    precision: str = "fp32"
    device: str = "cpu"
    providers: list[str] = field(default_factory=list)
    sequence_outputs: list[str] = field(default_factory=list)
    policy: dict[str, Any] = field(default_factory=dict)
    executions: int = 0
    queue_depth: int = 0

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> VersionInfo:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in value.items() if k in known})


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
        self._waiting: dict[int, asyncio.Future[tuple[dict[str, Any], list[Any]]]] = {}
        self._submitted: dict[int, asyncio.Future[tuple[float, float, list[Any]]]] = {}
        self._outbox: list[tuple[int, str, str, float | None, Sequence[Row]]] = []
        self._cancels: list[int] = []
        self._flush_scheduled = False
        self.on_table: Any = None
        self.on_stats_query: Any = None
        self.last_heard = time.monotonic()  # the owner's table comes every half second

    def start(self) -> None:
        self._link = LoopSocket(self._socket, self._on_message)

    def send(self, head: dict[str, Any], *buffers: Any) -> None:
        """Without waiting: what the socket cannot take now waits in the link's queue."""
        if self._link is None:
            raise OwnerGone()
        self._link.send(wire.encode(head, *buffers))

    def submit(
        self, model: str, version: str, deadline: float | None, rows: Sequence[Row]
    ) -> tuple[int, asyncio.Future[tuple[float, float, list[Any]]]]:
        request_id = next(self._ids)
        future: asyncio.Future[tuple[float, float, list[Any]]] = asyncio.get_running_loop().create_future()
        self._submitted[request_id] = future
        self._outbox.append((request_id, model, version, deadline, rows))
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
            head = {"op": "submit", "requests": [[rid, m, v, d, len(rows)] for rid, m, v, d, rows in outbox]}
            self.send(head, *wire.pack_rows([rows for *_, rows in outbox]))
        if cancels:
            self.send({"op": "cancel", "ids": cancels})

    async def request(self, head: dict[str, Any], timeout_s: float | None = None) -> tuple[dict[str, Any], list[Any]]:
        request_id = next(self._ids)
        future: asyncio.Future[tuple[dict[str, Any], list[Any]]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        try:
            self.send({**head, "id": request_id})
            if timeout_s is None:
                return await future
            async with asyncio.timeout(timeout_s):
                return await future
        finally:
            self._waiting.pop(request_id, None)

    def _on_message(self, frames: list[zmq.Frame]) -> None:
        self.last_heard = time.monotonic()
        head = wire.header(frames[0])
        op = head.get("op")
        if op == "results":
            self._results(head, frames[1:])
        elif op == "errors":
            for request_id, kind, message, retry_after_s in head["errors"]:
                submitted = self._submitted.pop(request_id, None)
                if submitted is not None and not submitted.done():
                    submitted.set_exception(ServeError(ErrorKind[kind], message, retry_after_s))
        elif op == "table" and self.on_table is not None:
            self.on_table(head)
        elif op == "stats_query" and self.on_stats_query is not None:
            self.send({"op": "stats_reply", "query": head["query"], "stats": self.on_stats_query()})
        elif (future := self._waiting.get(head.get("id", -1))) is not None and not future.done():
            future.set_result((head, frames[1:]))

    def _results(self, head: dict[str, Any], frames: list[Any]) -> None:
        results = head["results"]
        outputs = wire.unpack_outputs(head["spec"], frames, [n for *_, lengths in results for n in lengths])
        offset = 0
        for request_id, queue_s, inference_s, lengths in results:
            submitted = self._submitted.pop(request_id, None)
            if submitted is not None and not submitted.done():  # None: cancelled meanwhile
                submitted.set_result((queue_s, inference_s, outputs[offset : offset + len(lengths)]))
            offset += len(lengths)

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


def _error(head: dict[str, Any]) -> ServeError:
    return ServeError(ErrorKind[head["kind"]], head["message"], head.get("retry_after_s"))


class RemoteBatcher:
    """The owner's batcher of one version, as the service sees a batcher."""

    def __init__(self, client: OwnerClient, name: str, version: str, info: VersionInfo) -> None:
        self.client = client
        self.name = f"{name}:{version}"
        self._model, self._version = name, version
        self.info = info
        self.policy = BatchPolicy(**info.policy) if info.policy else BatchPolicy()

    @property
    def healthy(self) -> bool:
        return self.info.ready and self.info.alive

    @property
    def alive(self) -> bool:
        return self.info.alive

    @property
    def executions(self) -> int:
        return self.info.executions

    @property
    def queue_depth(self) -> int:
        return self.info.queue_depth

    def check_capacity(self) -> None:
        """The owner refuses a full queue itself; this only saves tokenizing when it is known full."""
        if self.info.queue_depth >= self.policy.max_queue_size:
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

    async def stop(self, drain_timeout_s: float = 0.0) -> None:
        """The owner stops its batchers; nothing to do here."""


class RemoteRuntime:
    """What `describe` and the v2 config read of a runtime; models run at the owner."""

    def __init__(self, info: VersionInfo) -> None:
        self.info = info

    @property
    def precision(self) -> str:
        return self.info.precision

    @property
    def device(self) -> str:
        return self.info.device

    @property
    def providers(self) -> list[str]:
        return self.info.providers

    @property
    def sequence_outputs(self) -> tuple[str, ...]:
        return tuple(self.info.sequence_outputs)

    def close(self) -> None:
        pass


class _NoLoader:
    heap_tuned = False  # no model runs in this process: nothing to trim for


class MirrorRegistry(ModelRegistry):
    def __init__(
        self,
        client: OwnerClient,
        repository: Path,
        *,
        default_policy: VersionPolicy | None = None,
        unload_timeout_s: float = 30.0,
    ) -> None:
        super().__init__(_NoLoader(), repository, default_policy=default_policy, unload_timeout_s=unload_timeout_s)  # type: ignore[arg-type]
        self.client = client
        self._tokenizers: dict[str, TokenizerPool] = {}
        self.started = False  # the owner finished its start-up loading
        self.owner_draining = False
        self.load_error: str | None = None
        self.epoch = -1
        self.stats: ModelStats | None = None  # this worker's statistics, for the owner to sum

    # -- the owner's table -----------------------------------------------------------------

    def apply(self, table: dict[str, Any]) -> None:
        if table["epoch"] <= self.epoch:
            return
        self.epoch = table["epoch"]
        self.started, self.owner_draining, self.load_error = table["loaded"], table["draining"], table["load_error"]
        for name, model in table["models"].items():
            slot = self.slots.get(name) or self.slots.setdefault(name, ModelSlot(name))
            slot.status = {v: VersionStatus(State(state), reason) for v, (state, reason) in model["status"].items()}
            for version, raw in model["versions"].items():
                info = VersionInfo.from_json(raw)
                current = slot.loaded.get(version)
                if current is not None and str(current.path) == info.path and not current.retiring:
                    current.batcher.info = info  # type: ignore[attr-defined]
                    current.runtime.info = info  # type: ignore[attr-defined]
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
            for version in [v for v in slot.loaded if v not in model["versions"]]:
                self._retire_here(slot, slot.loaded[version])
        for name in [n for n in self.slots if n not in table["models"]]:
            for version in list(self.slots[name].loaded.values()):
                self._retire_here(self.slots[name], version)
        for listener in list(self._listeners):
            listener()

    def _version(self, name: str, version: str, info: VersionInfo) -> ModelVersion:
        path = Path(info.path)
        manifest = Manifest.read(path)
        data = (path / manifest.tokenizer).read_bytes()
        digest = sha256_hex(data)
        pool = self._tokenizers.get(digest) or self._tokenizers.setdefault(digest, TokenizerPool(data.decode("utf-8")))
        return ModelVersion(
            name=name,
            version=version,
            path=path,
            manifest=manifest,
            task=TASKS[manifest.task],
            tokenizers=pool,
            runtime=RemoteRuntime(info),  # type: ignore[arg-type]
            batcher=RemoteBatcher(self.client, name, version, info),  # type: ignore[arg-type]
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
            self.client.send(
                {"op": "release", "model": version.name, "version": version.version, "path": str(version.path)}
            )

    # -- what only the owner can do --------------------------------------------------------

    async def _control(self, op: str, **args: Any) -> Any:
        answer, _ = await self.client.request({"op": "control", "action": op, **args}, timeout_s=600)
        if answer.get("ok"):
            return answer.get("result")
        if answer.get("load_error"):
            raise ModelLoadError(answer["message"])
        raise _error(answer)

    async def load(self, name: str, *, retry_failed: bool = True) -> list[str]:
        return await self._control("load", name=name)

    async def unload(self, name: str) -> None:
        await self._control("unload", name=name)

    async def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        return await self._control("index", ready=ready_only)

    async def poll(self) -> None:
        """The owner polls the repository."""

    async def stop(self, timeout_s: float) -> None:
        """The owner stops the batchers (after every worker has drained)."""
        self.stopping = True

    async def cluster_stats(self) -> ModelStats | None:
        """Every worker's statistics summed (each worker counts the requests it answered)."""
        answer, _ = await self.client.request({"op": "stats"}, timeout_s=10)
        merged = ModelStats(self._executions)
        merged.merge(answer["stats"])
        return merged

    def _executions(self, model: str, version: str) -> int:
        slot = self.slots.get(model)
        loaded = slot.loaded.get(version) if slot else None
        return loaded.batcher.executions if loaded else 0


def worker_identity(index: int) -> str:
    return f"w{index}-{os.getpid()}"
