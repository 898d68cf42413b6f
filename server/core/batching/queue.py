"""The batcher's queue: requests with rows waiting, taken in turn so that none starves.

Requests are kept least recently served first (a new one joins at the end). A window for the
selection policy takes one row of each waiting request, then a second of each, and so on, so a
request of many rows gets one batch in turn with the others instead of all of them first; the
window's first row anchors the next batch. Requests whose deadline passed are handed back to the
batcher (which answers them) instead of joining a window.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from server.core.batching.interface import SubmitResult
from server.core.rows import Row, RowOutputs


@dataclass(eq=False, slots=True)
class QueuedRequest:
    rows: Sequence[Row]
    future: asyncio.Future[SubmitResult] | None
    deadline: float | None
    submitted: float
    outputs: list[RowOutputs | None]
    pending: deque[QueuedRow] = field(default_factory=deque)  # its rows still in the queue, in order
    unfinished: int = 0  # rows without an output yet
    started: float | None = None
    timer: asyncio.TimerHandle | None = None
    # Answered or abandoned: its rows left the queue; a running batch's outputs for it are ignored.
    closed: bool = False


@dataclass(eq=False, slots=True)
class QueuedRow:
    request: QueuedRequest
    index: int  # in its request's rows
    length: int

    @property
    def row(self) -> Row:
        return self.request.rows[self.index]


class RequestQueue:
    def __init__(self, window_size: int, on_depth: Callable[[int], None]) -> None:
        self.window_size = window_size
        self._on_depth = on_depth
        self._waiting: OrderedDict[QueuedRequest, None] = OrderedDict()
        self._depth = 0

    @property
    def depth(self) -> int:
        """Rows waiting (not those running)."""
        return self._depth

    def __iter__(self) -> Iterator[QueuedRequest]:
        return iter(list(self._waiting))

    def add(self, request: QueuedRequest) -> None:
        request.pending.extend(QueuedRow(request, i, len(row)) for i, row in enumerate(request.rows))
        self._waiting[request] = None
        self._set_depth(self._depth + len(request.pending))

    def window(self, now: float) -> tuple[list[QueuedRow], list[QueuedRequest]]:
        """Up to a window of queued rows, one of each waiting request per round, and the requests
        whose deadline passed (still queued: the caller answers and closes them)."""
        waiting: list[QueuedRequest] = []
        expired: list[QueuedRequest] = []
        for request in self._waiting:
            if request.deadline is not None and request.deadline <= now:
                expired.append(request)
                continue
            waiting.append(request)
            if len(waiting) >= self.window_size:
                break
        window: list[QueuedRow] = []
        size = self.window_size
        for depth in range(size):
            took = False
            for request in waiting:
                if depth < len(request.pending):
                    window.append(request.pending[depth])
                    took = True
                    if len(window) >= size:
                        return window, expired
            if not took:
                break
        return window, expired

    def take(self, chosen: Sequence[QueuedRow]) -> None:
        """Take the chosen rows off their requests' queues (each among the first of its request); a
        request with rows left goes behind the requests that got none this time."""
        by_request: dict[QueuedRequest, set[int]] = {}
        for entry in chosen:
            by_request.setdefault(entry.request, set()).add(id(entry))
        for request, taken in by_request.items():
            pending = request.pending
            kept = []
            while taken:
                entry = pending.popleft()
                if id(entry) in taken:
                    taken.discard(id(entry))
                else:
                    kept.append(entry)
            pending.extendleft(reversed(kept))
            if pending:
                self._waiting.move_to_end(request)
            else:
                self._waiting.pop(request, None)
        self._set_depth(self._depth - len(chosen))

    def close(self, request: QueuedRequest) -> int:
        """Mark a request answered or abandoned and take its rows off the queue; returns how many."""
        request.closed = True
        if request.timer is not None:
            request.timer.cancel()
            request.timer = None
        dropped = len(request.pending)
        request.pending.clear()
        self._waiting.pop(request, None)
        if dropped:
            self._set_depth(self._depth - dropped)
        return dropped

    def _set_depth(self, depth: int) -> None:
        self._depth = depth
        self._on_depth(depth)
