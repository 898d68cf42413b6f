"""The model owner of the multi-process front end: the registry (every loaded version, its runtime
and batcher) behind one ZeroMQ ROUTER socket that the API workers talk to.

- `submit`: rows for a version's batcher; the answer carries the outputs (or the error table's
  kind and message). The request holds a lease on the version while it runs, like a local one.
- `cancel`: the worker's request went away (client gone, deadline); its rows leave the queue.
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
import itertools
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import zmq
import zmq.asyncio

from server.core.errors import ErrorKind, ModelLoadError, ServeError
from server.core.model import ModelVersion
from server.core.registry import ModelRegistry
from server.core.stats import ModelStats
from server.workers import wire

log = logging.getLogger("electra.owner")
TABLE_PERIOD_S = 0.5


@dataclass
class WorkerLink:
    identity: bytes
    pending: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    holds: set[tuple[str, str, str]] = field(default_factory=set)  # (model, version, path) not yet released


class ModelOwner:
    def __init__(self, registry: ModelRegistry, address: str) -> None:
        self.registry = registry
        self.address = address
        self.workers: dict[bytes, WorkerLink] = {}
        self.loaded = False
        self.load_error: str | None = None
        self.draining = False
        self._epoch = itertools.count(1)
        self._last_table: dict[str, Any] | None = None
        self._released = asyncio.Event()
        self._queries = itertools.count(1)
        self._stats_answers: dict[int, tuple[set[bytes], list[list[dict[str, Any]]], asyncio.Event]] = {}
        context = zmq.asyncio.Context.instance()
        self._socket = context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unknown identity is an error, not a silent drop
        self._socket.bind(address)
        self._tasks: set[asyncio.Task[Any]] = set()
        registry.subscribe(self._publish_soon)
        registry.retire_hook = self.wait_released

    # -- the socket ------------------------------------------------------------------------

    async def run(self) -> None:
        publisher = asyncio.get_running_loop().create_task(self._publish_periodically(), name="owner-table")
        try:
            while True:
                frames = await self._socket.recv_multipart(copy=False)
                identity = frames[0].bytes
                try:
                    self._dispatch(identity, wire.header(frames[1]), frames[2:])
                except Exception:  # a bad message must not stop the owner
                    log.exception("a message from worker %s could not be handled", identity)
        finally:
            publisher.cancel()

    async def _send(self, identity: bytes, head: dict[str, Any], *buffers: Any) -> None:
        try:
            await self._socket.send_multipart([identity, *wire.encode(head, *buffers)], copy=False)
        except zmq.ZMQError as exc:  # the worker is gone (EHOSTUNREACH): nothing to answer to
            log.debug("worker %s unreachable: %s", identity, exc)

    def _spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _dispatch(self, identity: bytes, head: dict[str, Any], frames: Sequence[Any]) -> None:
        op = head.get("op")
        link = self.workers.get(identity)
        if link is None:
            link = self.workers[identity] = WorkerLink(identity)
            log.info("worker %s connected", identity.decode(errors="replace"))
            self._spawn(self._send(identity, self.table()))
        if op == "submit":
            request_id = head["id"]
            task = self._spawn(self._submit(link, request_id, head, frames))
            link.pending[request_id] = task
            task.add_done_callback(lambda _: link.pending.pop(request_id, None))
        elif op == "cancel":
            task = link.pending.get(head["id"])
            if task is not None:
                task.cancel()
        elif op == "release":
            link.holds.discard((head["model"], head["version"], head["path"]))
            self._released.set()
        elif op == "control":
            self._spawn(self._control(link, head))
        elif op == "stats":
            self._spawn(self._stats(link, head))
        elif op == "stats_reply":
            waiting = self._stats_answers.get(head["query"])
            if waiting is not None:
                pending, answers, done = waiting
                pending.discard(identity)
                answers.append(head["stats"])
                if not pending:
                    done.set()
        elif op != "hello":
            log.warning("unknown message %r from worker %s", op, identity)

    # -- requests ---------------------------------------------------------------------------

    async def _submit(self, link: WorkerLink, request_id: int, head: dict[str, Any], frames: Sequence[Any]) -> None:
        try:
            version = self._version(head["model"], head["version"])
            rows = wire.unpack_rows(frames)
            version.acquire()
            try:
                result = await version.batcher.submit(rows, head.get("deadline"))
            finally:
                version.release()
            spec, buffers = wire.pack_outputs(result.outputs, frozenset(version.runtime.sequence_outputs))
            answer = {"op": "result", "id": request_id, "outputs": spec, "queue_s": result.queue_seconds,
                      "inference_s": result.inference_seconds}  # fmt: skip
            await self._send(link.identity, answer, *buffers)
        except asyncio.CancelledError:
            return  # the worker cancelled it: its rows left the batcher's queue
        except ServeError as error:
            await self._send(link.identity, _error(request_id, error))
        except Exception:
            log.exception("a request from worker %s failed", link.identity)
            await self._send(
                link.identity, _error(request_id, ServeError(ErrorKind.INTERNAL, "the model owner failed"))
            )

    def _version(self, model: str, version: str) -> ModelVersion:
        # A retiring version still takes the requests of workers that resolved it before they saw
        # the new table: it is freed only after every worker released it.
        slot = self.registry.slots.get(model)
        found = slot.loaded.get(version) if slot else None
        if found is None:
            raise ServeError(ErrorKind.UNAVAILABLE, f"model '{model}' version {version} is not loaded", 1.0)
        return found

    async def _control(self, link: WorkerLink, head: dict[str, Any]) -> None:
        action, request_id = head["action"], head["id"]
        try:
            if action == "load":
                result: Any = await self.registry.load(head["name"])
            elif action == "unload":
                result = await self.registry.unload(head["name"])
            elif action == "index":
                result = self.registry.index(bool(head.get("ready")))
            else:
                raise ServeError(ErrorKind.BAD_REQUEST, f"unknown control action {action!r}")
            await self._send(link.identity, {"op": "reply", "id": request_id, "ok": True, "result": result})
        except ModelLoadError as exc:
            await self._send(link.identity, {"op": "reply", "id": request_id, "ok": False, "load_error": True,
                                             "message": str(exc)})  # fmt: skip
        except ServeError as error:
            await self._send(link.identity, {**_error(request_id, error), "op": "reply", "ok": False})

    async def _stats(self, link: WorkerLink, head: dict[str, Any]) -> None:
        query = next(self._queries)
        pending = set(self.workers)
        answers: list[list[dict[str, Any]]] = []
        done = asyncio.Event()
        self._stats_answers[query] = (pending, answers, done)
        try:
            for identity in list(pending):
                await self._send(identity, {"op": "stats_query", "query": query})
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await done.wait()
        finally:
            del self._stats_answers[query]
        merged = ModelStats(lambda model, version: 0)
        for snapshot in answers:
            merged.merge(snapshot)
        await self._send(link.identity, {"op": "reply", "id": head["id"], "ok": True, "stats": merged.snapshot()})

    # -- the table --------------------------------------------------------------------------

    def table(self) -> dict[str, Any]:
        models: dict[str, Any] = {}
        for name, slot in self.registry.slots.items():
            models[name] = {
                "status": {v: [s.state.value, s.reason] for v, s in slot.status.items()},
                "versions": {v.version: _describe(v) for v in slot.loaded.values()},
            }
        body = {"loaded": self.loaded, "draining": self.draining, "load_error": self.load_error, "models": models}
        return {"op": "table", "epoch": next(self._epoch), **body}

    def _publish_soon(self) -> None:
        self._spawn(self.publish())

    async def publish(self, force: bool = False) -> None:
        table = self.table()
        comparable = {k: v for k, v in table.items() if k != "epoch"}
        if not force and comparable == self._last_table:
            return
        self._last_table = comparable
        for identity in list(self.workers):
            await self._send(identity, table)

    async def _publish_periodically(self) -> None:
        while True:
            await asyncio.sleep(TABLE_PERIOD_S)
            try:
                await self.publish()
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
            for task in list(link.pending.values()):
                task.cancel()
            if not expected or cancelled:
                log.warning("worker %s is gone: %d requests of it cancelled", identity.decode(), cancelled)
        self._released.set()

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self._socket.close(0)


def _error(request_id: int, error: ServeError) -> dict[str, Any]:
    return {"op": "error", "id": request_id, "kind": error.kind.name, "message": error.message,
            "retry_after_s": error.retry_after_s}  # fmt: skip


def _describe(version: ModelVersion) -> dict[str, Any]:
    batcher, runtime = version.batcher, version.runtime
    return {
        "path": str(version.path),
        "ready": batcher.healthy,
        "alive": batcher.alive,
        "retiring": version.retiring,
        "precision": runtime.precision,
        "device": runtime.device,
        "providers": list(runtime.providers),
        "sequence_outputs": list(runtime.sequence_outputs),
        "policy": asdict(batcher.policy),
        "executions": batcher.executions,
        "queue_depth": batcher.queue_depth,
    }
