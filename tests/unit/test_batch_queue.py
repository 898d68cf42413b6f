"""The batcher's queue on its own: fair windows, taking rows, closing requests, expiry, depth."""

from __future__ import annotations

import numpy as np

from server.core.batching.queue import QueuedRequest, RequestQueue
from server.core.rows import Row


def request(*lengths: int, submitted: float = 0.0, deadline: float | None = None) -> QueuedRequest:
    rows = [Row(np.ones(n, dtype=np.int64), np.zeros(n, dtype=np.int64)) for n in lengths]
    return QueuedRequest(
        rows=rows, future=None, deadline=deadline, submitted=submitted, outputs=[None] * len(rows), unfinished=len(rows)
    )


def queue(window: int = 8) -> tuple[RequestQueue, list[int]]:
    depths: list[int] = []
    return RequestQueue(window, depths.append), depths


def test_a_window_takes_one_row_of_each_request_per_round() -> None:
    q, depths = queue(window=5)
    a, b, c = request(1, 2, 3), request(10), request(20, 21)
    for r in (a, b, c):
        q.add(r)
    window, expired = q.window(now=0.0)
    assert [(e.request, e.index) for e in window] == [(a, 0), (b, 0), (c, 0), (a, 1), (c, 1)]
    assert expired == []
    assert depths == [3, 4, 6] and q.depth == 6


def test_taking_rows_moves_a_request_behind_the_others() -> None:
    q, _ = queue()
    a, b = request(1, 2, 3), request(10)
    q.add(a)
    q.add(b)
    window, _ = q.window(0.0)
    q.take([window[0]])  # a's first row runs
    assert [(e.request, e.index) for e in q.window(0.0)[0]] == [(b, 0), (a, 1), (a, 2)]
    assert q.depth == 3
    q.take([e for e in q.window(0.0)[0] if e.request is b])
    assert list(q) == [a]  # b has nothing left: it leaves the queue


def test_closing_drops_what_is_still_queued() -> None:
    q, depths = queue()
    a = request(1, 2)
    q.add(a)
    assert q.close(a) == 2
    assert a.closed and not a.pending and q.depth == 0 and list(q) == []
    assert depths[-1] == 0
    assert q.close(a) == 0  # twice is harmless


def test_expired_requests_are_handed_back_not_windowed() -> None:
    q, _ = queue()
    late, fresh = request(4, deadline=1.0), request(5, deadline=None)
    q.add(late)
    q.add(fresh)
    window, expired = q.window(now=2.0)
    assert expired == [late]
    assert [e.request for e in window] == [fresh]
    assert q.depth == 2  # still queued until the batcher closes it


def test_a_window_is_bounded_by_its_size() -> None:
    q, _ = queue(window=3)
    for _ in range(5):
        q.add(request(7, 7))
    window, _ = q.window(0.0)
    assert len(window) == 3 and all(e.index == 0 for e in window)
