"""A worker's line to the model owner: one ZeroMQ DEALER socket, the messages of `messages`
(one handler per type), submits of one event-loop turn sent as one message, and requests
(control, statistics) matched to their replies by id."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import zmq

from server.core.errors import ErrorKind, ServeError
from server.core.rows import Row, RowOutputs
from server.workers import messages as m
from server.workers import wire
from server.workers.loopsocket import LoopSocket
from server.workers.turns import OncePerTurn

log = logging.getLogger("electra.worker")

Submitted = tuple[float, float, list[RowOutputs]]  # queue seconds, inference seconds, each row's outputs


class OwnerGone(ServeError):
    def __init__(self) -> None:
        super().__init__(ErrorKind.UNAVAILABLE, "the model owner is not answering", retry_after_s=1.0)


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
        self._flush_soon = OncePerTurn(self._flush).soon
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

    def _flush(self) -> None:
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
