"""Admission on its own: what a batcher refuses before anything is queued, and the Retry-After it
tells an overloaded client."""

from __future__ import annotations

import numpy as np
import pytest

from server.core.batching.admission import Admission
from server.core.batching.queue import QueuedRequest, RequestQueue
from server.core.config import BatchPolicy
from server.core.errors import ErrorKind, ServeError
from server.core.rows import Row


def row(n: int) -> Row:
    return Row(np.ones(n, dtype=np.int64), np.zeros(n, dtype=np.int64))


def admission(**policy: int) -> tuple[Admission, RequestQueue, list[str]]:
    drops: list[str] = []
    queue = RequestQueue(8, lambda depth: None)
    return Admission("m", BatchPolicy(**policy), queue, drops.append), queue, drops


def fill(queue: RequestQueue, rows: int) -> None:
    queue.add(QueuedRequest([row(2)] * rows, None, None, 0.0, [None] * rows, unfinished=rows))


def refused(call: object, *args: object) -> ServeError:
    with pytest.raises(ServeError) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value


def test_what_is_refused_and_why() -> None:
    gate, queue, drops = admission(max_queue_size=4, max_request_rows=3, max_batch_size=2)
    gate.check([row(2), row(3)], deadline=None, now=0.0)  # fine
    assert refused(gate.check, [row(0)], None, 0.0).kind is ErrorKind.INTERNAL  # an empty row
    assert refused(gate.check, [row(2)], 1.0, 2.0).kind is ErrorKind.DEADLINE_EXCEEDED
    too_many = refused(gate.check, [row(2)] * 4, None, 0.0)
    assert too_many.kind is ErrorKind.TOO_LARGE and "at most 3" in too_many.message
    fill(queue, 3)
    assert refused(gate.check, [row(2)] * 2, None, 0.0).kind is ErrorKind.OVERLOADED  # 3 + 2 > 4
    gate.check([row(2)], None, 0.0)  # 3 + 1 fits
    assert drops == ["deadline", "overload"]


def test_capacity_is_checked_before_tokenizing() -> None:
    gate, queue, drops = admission(max_queue_size=2)
    gate.check_capacity(accepting=True, died=False)
    fill(queue, 2)
    assert refused(gate.check_capacity, True, False).kind is ErrorKind.OVERLOADED
    assert "shutting down" in refused(gate.check_capacity, False, False).message
    assert "batching loop failed" in refused(gate.check_capacity, False, True).message
    assert drops == ["overload"]


def test_retry_after_follows_recent_batches() -> None:
    gate, queue, _ = admission(max_queue_size=64, max_batch_size=4, max_inflight_batches=2)
    assert gate.retry_after() == 1.0  # nothing ran yet
    fill(queue, 32)
    for _ in range(20):
        gate.batch_ran(0.5)
    assert gate.retry_after() == 2.0  # 8 batches over 2 threads at ~0.5 s: 2 s
    assert gate.overloaded().retry_after_s == 2.0
