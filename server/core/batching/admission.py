"""Whether a request may join a batcher's queue: the batcher is accepting, the rows are well
formed, the deadline has not passed, the request stays within its share of the queue and the
queue within its bound; and the Retry-After an overloaded client is told, from recent batch times.
Refusals raise at once, before anything is queued."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from server.core.batching.queue import RequestQueue
from server.core.config import BatchPolicy
from server.core.errors import ErrorKind, ServeError, too_large
from server.core.rows import Row


class Admission:
    def __init__(self, name: str, policy: BatchPolicy, queue: RequestQueue, on_drop: Callable[[str], None]) -> None:
        self.name = name
        self.policy = policy
        self._queue = queue
        self._on_drop = on_drop  # one refused request: deadline | overload
        self._batch_seconds_ewma: float | None = None

    def batch_ran(self, seconds: float) -> None:
        ewma = self._batch_seconds_ewma
        self._batch_seconds_ewma = seconds if ewma is None else 0.8 * ewma + 0.2 * seconds

    def check_capacity(self, accepting: bool, died: bool) -> None:
        """Refuse (429) while the queue is full: a request would be tokenized only to be refused."""
        if not accepting:
            raise self.not_accepting(died)
        if self._queue.depth >= self.policy.max_queue_size:
            self._on_drop("overload")
            raise self.overloaded()

    def check(self, rows: Sequence[Row], deadline: float | None, now: float) -> None:
        """A request of these rows may join the queue now (the batcher is accepting)."""
        for row in rows:
            if len(row) == 0 or row.input_ids.ndim != 1 or row.token_type_ids.shape != row.input_ids.shape:
                raise ServeError(
                    ErrorKind.INTERNAL,
                    f"malformed model input: input_ids {row.input_ids.shape}, "
                    f"token_type_ids {row.token_type_ids.shape}",
                )
        if deadline is not None and deadline <= now:
            self._on_drop("deadline")
            raise ServeError(ErrorKind.DEADLINE_EXCEEDED, "the request's deadline passed before it was queued")
        share = self.policy.request_rows_limit
        if len(rows) > share:
            raise too_large(
                f"the request needs {len(rows)} model inputs; one request may queue at most {share} "
                f"(a share of the queue of {self.policy.max_queue_size})"
            )
        if self._queue.depth + len(rows) > self.policy.max_queue_size:
            self._on_drop("overload")
            raise self.overloaded()

    def not_accepting(self, died: bool) -> ServeError:
        why = "is not running (its batching loop failed)" if died else "is shutting down"
        return ServeError(ErrorKind.UNAVAILABLE, f"model {self.name} {why}")

    def overloaded(self) -> ServeError:
        return ServeError(
            ErrorKind.OVERLOADED,
            f"model {self.name} is overloaded: {self._queue.depth} inputs queued (max {self.policy.max_queue_size})",
            retry_after_s=self.retry_after(),
        )

    def retry_after(self) -> float:
        """Seconds until the queue has likely drained enough, from recent batch times."""
        if self._batch_seconds_ewma is None:
            return 1.0
        batches = math.ceil(self._queue.depth / self.policy.max_batch_size) / self.policy.max_inflight_batches
        return float(max(1, math.ceil(batches * self._batch_seconds_ewma)))
