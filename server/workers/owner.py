"""The model owner of the multi-process front end: the registry (every loaded version, its runtime
and batcher) behind one ZeroMQ ROUTER socket that the API workers talk to (the messages are the
structs of `messages`, one handler each).

- `submit`: requests (their rows) for versions' batchers; answers carry the outputs, or the error
  table's kind and message. A request holds a lease on its version while it runs, like a local
  one. Requests go straight into the batcher and are answered from its future's callback (no task
  each), and the answers of one turn of the event loop leave as one message per worker.
- `cancel`: the worker's requests went away (client gone, deadline); their rows leave the queue.
- `release`: a worker holds no request on a retiring version any more. A version is freed only
  once every live worker has released it (or the unload timeout passed).
- `control`: load, unload and the repository index, asked through any worker.
- `stats`: Triton's statistics summed over every worker (each counts what it answered).
- The model table (versions, states, health, queue depths) goes to every worker on every change of
  the registry and every half second; workers build their mirror from it.

A worker that dies has its queued work cancelled and its holds dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import msgspec
import zmq

from server.core.batching import DynamicBatcher, SubmitResult
from server.core.batching.queue import QueuedRequest
from server.core.errors import ErrorKind, ModelLoadError, ServeError
from server.core.model import ModelVersion
from server.core.registry import ModelRegistry
from server.core.stats import ModelStats
from server.workers import messages as m
from server.workers import wire
from server.workers.loopsocket import LoopSocket
from server.workers.turns import OncePerTurn

log = logging.getLogger("electra.owner")
TABLE_PERIOD_S = 0.5


@dataclass
class WorkerLink:
    identity: bytes
    # request id -> (version, its request in the batcher)
    pending: dict[int, tuple[ModelVersion, QueuedRequest]] = field(default_factory=dict)
    holds: set[tuple[str, str, str]] = field(default_factory=set)  # (model, version, path) not yet released


class ModelOwner:
    def __init__(self, registry: ModelRegistry, address: str) -> None:
        self.registry = registry
        self.address = address
        self.workers: dict[bytes, WorkerLink] = {}
        self.draining = False
        self._epoch = itertools.count(1)
        self._last_table: m.Table | None = None
        self._released = asyncio.Event()
        self._queries = itertools.count(1)
        self._stats_answers: dict[int, tuple[set[bytes], list[list[dict[str, Any]]], asyncio.Event]] = {}
        self._handlers: dict[type[m.Message], Callable[[WorkerLink, Any, Sequence[Any]], None]] = {
            m.Hello: lambda link, message, frames: None,
            m.Submit: self._submit,
            m.Cancel: self._cancel,
            m.Release: self._release,
            m.Control: lambda link, message, frames: self._start(self._control(link, message)),
            m.Stats: lambda link, message, frames: self._start(self._stats(link, message)),
            m.StatsReply: self._stats_reply,
        }
        socket: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.ROUTER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unknown identity is an error, not a silent drop
        socket.bind(address)
        self._socket = socket
        self._link: LoopSocket | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # Answers of this turn of the event loop, by worker and output shape.
        self._results: dict[tuple[bytes, tuple[Any, ...]], list[tuple[int, list[int], SubmitResult]]] = {}
        self._errors: dict[bytes, list[m.Failed]] = {}
        self._flush_soon = OncePerTurn(self._flush).soon
        registry.catalogue.subscribe(self._publish_soon)
        registry.add_retire_gate(self.wait_released)

    # -- the socket ------------------------------------------------------------------------

    async def run(self) -> None:
        self._link = LoopSocket(self._socket, self._on_message)
        try:
            await self._publish_periodically()
        finally:
            self._link.close()

    def _on_message(self, frames: list[zmq.Frame]) -> None:
        identity = frames[0].bytes
        try:
            message = m.decode_to_owner(wire.buffer(frames[1]))
        except msgspec.DecodeError as exc:
            log.warning("a malformed message from worker %s: %s", identity.decode(errors="replace"), exc)
            return
        try:
            self._dispatch(identity, message, frames[2:])
        except Exception:  # a bad message must not stop the owner
            log.exception("a message from worker %s could not be handled", identity)

    def _send(self, identity: bytes, message: m.Message, *buffers: Any) -> None:
        """Without waiting: a message the socket cannot take now waits in the link's queue; one to a
        worker that went away (EHOSTUNREACH) is logged and dropped."""
        if self._link is not None:
            self._link.send([identity, *wire.message_frames(message, *buffers)])

    def _start(self, coroutine: Any) -> None:
        self._spawn(coroutine)

    def _spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _dispatch(self, identity: bytes, message: m.ToOwner, frames: Sequence[Any]) -> None:
        link = self.workers.get(identity)
        if link is None:
            link = self.workers[identity] = WorkerLink(identity)
            log.info("worker %s connected", identity.decode(errors="replace"))
            self._send(identity, self.table())
        self._handlers[type(message)](link, message, frames)

    def _cancel(self, link: WorkerLink, message: m.Cancel, frames: Sequence[Any]) -> None:
        for request_id in message.ids:
            entry = link.pending.get(request_id)
            if entry is not None:
                local_batcher(entry[0]).abandon(entry[1])

    def _release(self, link: WorkerLink, message: m.Release, frames: Sequence[Any]) -> None:
        link.holds.discard((message.model, message.version, message.path))
        self._released.set()

    def _stats_reply(self, link: WorkerLink, message: m.StatsReply, frames: Sequence[Any]) -> None:
        waiting = self._stats_answers.get(message.query)
        if waiting is not None:
            pending, answers, done = waiting
            pending.discard(link.identity)
            answers.append(message.stats)
            if not pending:
                done.set()

    # -- requests ---------------------------------------------------------------------------

    def _submit(self, link: WorkerLink, message: m.Submit, frames: Sequence[Any]) -> None:
        """Every request of the message into its version's batcher; each answers from a callback."""
        requests = message.requests
        try:
            rows = wire.unpack_rows(frames, [r.rows for r in requests])
        except ValueError as exc:
            for request in requests:
                self._fail(link, request.id, ServeError(ErrorKind.INTERNAL, f"malformed rows from a worker: {exc}"))
            return
        for request, request_rows in zip(requests, rows, strict=True):
            request_id = request.id
            try:
                version = self._version(request.model, request.version)
                queued = local_batcher(version).enqueue(request_rows, request.deadline)
            except ServeError as error:
                self._fail(link, request_id, error)
                continue
            version.acquire()
            link.pending[request_id] = (version, queued)
            assert queued.future is not None
            lengths = [len(row) for row in request_rows]
            queued.future.add_done_callback(functools.partial(self._answered, link, request_id, version, lengths))

    def _answered(
        self, link: WorkerLink, request_id: int, version: ModelVersion, lengths: list[int], future: asyncio.Future[Any]
    ) -> None:
        version.release()
        link.pending.pop(request_id, None)
        if future.cancelled():
            return  # abandoned: the worker cancelled it, or went away
        error = future.exception()
        if error is not None:
            if not isinstance(error, ServeError):
                log.error("a request from worker %s failed", link.identity, exc_info=error)
                error = ServeError(ErrorKind.INTERNAL, "the model owner failed")
            self._fail(link, request_id, error)
            return
        result: SubmitResult = future.result()
        spec = wire.output_spec(result.outputs[0], frozenset(version.runtime.sequence_outputs))
        key = (link.identity, tuple((name, sequence, tuple(tail)) for name, sequence, tail in spec))
        self._results.setdefault(key, []).append((request_id, lengths, result))
        self._flush_soon()

    def _fail(self, link: WorkerLink, request_id: int, error: ServeError) -> None:
        failed = m.Failed(request_id, error.kind.name, error.message, error.retry_after_s)
        self._errors.setdefault(link.identity, []).append(failed)
        self._flush_soon()

    def _flush(self) -> None:
        """Everything answered in this turn of the event loop: one message per worker and output shape."""
        results, self._results = self._results, {}
        errors, self._errors = self._errors, {}
        for (identity, key), answered in results.items():
            spec = [(name, sequence, list(tail)) for name, sequence, tail in key]
            # Each result says its rows' lengths: the worker may have given the request up meanwhile.
            done = [m.Answered(rid, r.queue_seconds, r.inference_seconds, n) for rid, n, r in answered]
            rows = [row for _, _, r in answered for row in r.outputs]
            self._send(identity, m.Results(spec, done), *wire.pack_outputs(spec, rows))
        for identity, failed in errors.items():
            self._send(identity, m.Errors(failed))

    def _version(self, model: str, version: str) -> ModelVersion:
        # A retiring version still takes the requests of workers that resolved it before they saw
        # the new table: it is freed only after every worker released it.
        slot = self.registry.table.slots.get(model)
        found = slot.loaded.get(version) if slot else None
        if found is None:
            raise ServeError(ErrorKind.UNAVAILABLE, f"model '{model}' version {version} is not loaded", 1.0)
        return found

    async def _control(self, link: WorkerLink, message: m.Control) -> None:
        try:
            result: Any = None
            if message.action == "load":
                result = await self.registry.load(message.name)
            elif message.action == "unload":
                await self.registry.unload(message.name)
            else:
                result = self.registry.index(message.ready)
            self._send(link.identity, m.Reply(message.id, ok=True, result=result))
        except ModelLoadError as exc:
            self._send(link.identity, m.Reply(message.id, ok=False, load_error=True, message=str(exc)))
        except ServeError as error:
            reply = m.Reply(
                message.id, False, kind=error.kind.name, message=error.message, retry_after_s=error.retry_after_s
            )
            self._send(link.identity, reply)

    async def _stats(self, link: WorkerLink, message: m.Stats) -> None:
        query = next(self._queries)
        pending = set(self.workers)
        answers: list[list[dict[str, Any]]] = []
        done = asyncio.Event()
        self._stats_answers[query] = (pending, answers, done)
        try:
            for identity in list(pending):
                self._send(identity, m.StatsQuery(query))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await done.wait()
        finally:
            del self._stats_answers[query]
        merged = ModelStats(lambda model, version: 0)
        for snapshot in answers:
            merged.merge(snapshot)
        self._send(link.identity, m.Reply(message.id, ok=True, stats=merged.snapshot()))

    # -- the table --------------------------------------------------------------------------

    def table(self) -> m.Table:
        models = {
            name: m.ModelEntry(
                status={v: (s.state.value, s.reason) for v, s in slot.status.items()},
                versions={v.version: describe(v) for v in slot.loaded.values()},
            )
            for name, slot in self.registry.table.slots.items()
        }
        registry = self.registry
        load_error = "loading the models failed (see the server log)" if registry.load_error else None
        return m.Table(next(self._epoch), registry.started, self.draining, load_error, models)

    def _publish_soon(self) -> None:
        self._spawn(self.publish())

    async def publish(self, force: bool = False) -> None:
        table = self.table()
        comparable = msgspec.structs.replace(table, epoch=0)
        if not force and comparable == self._last_table:
            return
        self._last_table = comparable
        for identity in list(self.workers):
            self._send(identity, table)

    async def _publish_periodically(self) -> None:
        # Forced: the periodic table is also the owner's heartbeat. Skipping unchanged tables left
        # an idle server's workers without a word for 3 s, and they turned not ready ("loading").
        while True:
            await asyncio.sleep(TABLE_PERIOD_S)
            try:
                await self.publish(force=True)
            except Exception:
                log.exception("publishing the model table failed")

    # -- versions leaving -------------------------------------------------------------------

    async def wait_released(self, version: ModelVersion, timeout_s: float) -> None:
        """Before a version is freed: every worker said it holds no request on it (their mirrors
        stopped using it when the table said it was retiring)."""
        key = (version.name, version.version, str(version.path))
        for link in self.workers.values():
            link.holds.add(key)
        await self.publish(force=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while any(key in link.holds for link in self.workers.values()):
                    self._released.clear()
                    await self._released.wait()
        for link in self.workers.values():
            link.holds.discard(key)

    def worker_gone(self, identity_prefix: str, expected: bool = False) -> None:
        """A worker process ended: its queued work is cancelled, its holds dropped."""
        for identity in [i for i in self.workers if i.decode(errors="replace").startswith(identity_prefix)]:
            link = self.workers.pop(identity)
            cancelled = len(link.pending)
            for version, queued in list(link.pending.values()):
                local_batcher(version).abandon(queued)
            if not expected or cancelled:
                log.warning("worker %s is gone: %d requests of it cancelled", identity.decode(), cancelled)
        self._released.set()

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._link is not None:
            self._link.close()
        else:
            self._socket.close(0)


def local_batcher(version: ModelVersion) -> DynamicBatcher:
    """The owner's versions run here: their batchers take requests from callbacks (`enqueue`)."""
    batcher = version.batcher
    if not isinstance(batcher, DynamicBatcher):
        raise TypeError(f"model {version.name} version {version.version} has no local batcher")
    return batcher


def describe(version: ModelVersion) -> m.VersionInfo:
    batcher, runtime = version.batcher, version.runtime
    return m.VersionInfo(
        path=str(version.path),
        ready=batcher.healthy,
        alive=batcher.alive,
        retiring=version.retiring,
        precision=runtime.precision,
        device=runtime.device,
        providers=list(runtime.providers),
        sequence_outputs=list(runtime.sequence_outputs),
        policy=asdict(batcher.policy),
        executions=batcher.executions,
        queue_depth=batcher.queue_depth,
    )
