"""The dynamic batcher: one per model version, one asyncio task owning its queue.

Requests hand in rows (unpadded token sequences). The loop waits for the first row, then up
to `max_queue_delay_ms` (counted from the oldest queued row, as Triton does) for more, and
cuts a batch bounded by `max_batch_size` rows and `max_batch_tokens` padded tokens (rows x
longest row: the model pads, so that is what it computes), and optionally by attention cells
(rows x longest row squared). Rows within a sort window are grouped by length to cut padding.
The window takes rows from the waiting requests in turn (one row of each, then a second of
each...), least recently served first, and every batch contains the window's first row, so no
row starves and a request of many windows shares the model with the requests behind it instead
of holding it until it ends; one request may queue at most its share of the queue. Expired and
abandoned requests leave the queue at once. The model runs on a dedicated executor thread; while
every thread is busy, the next batch is staged only once it is full (a partial one keeps growing
until a thread frees up).

Failures stay as small as they can: a batch whose run fails is retried row by row (and split in
halves when it ran out of memory), so only the requests whose own rows fail get an error. After
`failure_threshold` failed runs in a row the batcher reports itself unhealthy (readiness turns
false) and probes the model with a one-row run every `probe_interval_s` until one succeeds. A
batching loop that dies is restarted (a few times in a minute at most; then the batcher is dead,
which liveness reports). Every request ends with a result or an error, never waiting forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from server.core.config import BatchPolicy
from server.core.errors import ErrorKind, ServeError, too_large
from server.core.rows import Row, RowOutputs

log = logging.getLogger(__name__)

RunFn = Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, np.ndarray]]

# Loop restarts allowed within RESTART_WINDOW_S before the batcher counts as dead.
MAX_RESTARTS = 3
RESTART_WINDOW_S = 60.0


class BatchObserver(Protocol):
    """Metrics hooks; called on the event loop thread, must be cheap and must not raise."""

    def on_batch(self, model_rows: int, real_tokens: int, padded_tokens: int, seconds: float) -> None: ...

    def on_drop(self, reason: str) -> None: ...  # one request: deadline | cancelled | overload

    def on_queue_depth(self, n: int) -> None: ...

    def on_failure(self, kind: str) -> None: ...  # a model run failed: error | oom

    def on_retry(self, rows: int) -> None: ...  # a failed batch's rows are run again in smaller parts

    def on_restart(self) -> None: ...  # the batching loop died and was restarted


class NullObserver:
    def on_batch(self, model_rows: int, real_tokens: int, padded_tokens: int, seconds: float) -> None:
        pass

    def on_drop(self, reason: str) -> None:
        pass

    def on_queue_depth(self, n: int) -> None:
        pass

    def on_failure(self, kind: str) -> None:
        pass

    def on_retry(self, rows: int) -> None:
        pass

    def on_restart(self) -> None:
        pass


@dataclass(slots=True)
class SubmitResult:
    outputs: list[RowOutputs]  # same order as the submitted rows, padding removed
    queue_seconds: float  # submit -> first of its rows started running
    inference_seconds: float  # first of its rows started -> last one finished


@dataclass(eq=False, slots=True)
class _Request:
    rows: Sequence[Row]
    future: asyncio.Future[SubmitResult] | None
    deadline: float | None
    submitted: float
    outputs: list[RowOutputs | None]
    pending: deque[_Entry] = field(default_factory=deque)  # its rows still in the queue, in order
    unfinished: int = 0  # rows without an output yet
    started: float | None = None
    timer: asyncio.TimerHandle | None = None
    # Answered or abandoned: its rows left the queue; a running batch's outputs for it are ignored.
    closed: bool = False


@dataclass(eq=False, slots=True)
class _Entry:
    request: _Request
    index: int
    length: int


def is_out_of_memory(exc: BaseException) -> bool:
    """onnxruntime reports allocation failures as plain runtime errors; read the message."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return any(
        s in text for s in ("out of memory", "failed to allocate", "alloc_failed", "bad_alloc", "memoryallocation")
    )


@dataclass(slots=True)
class _Outcome:
    """What the executor thread brings back: each row's outputs or error, and how the runs went."""

    outputs: list[RowOutputs | None]
    errors: list[BaseException | None]
    started: float
    seconds: float
    failed_runs: list[str] = field(default_factory=list)  # kinds of the runs that failed
    retried_rows: int = 0


class DynamicBatcher:
    def __init__(
        self,
        run: RunFn,
        policy: BatchPolicy,
        *,
        pad_token_id: int = 0,
        sequence_outputs: Collection[str] | None = None,
        observer: BatchObserver | None = None,
        executor: ThreadPoolExecutor | None = None,
        name: str = "model",
        failure_threshold: int = 5,
        probe_interval_s: float = 2.0,
    ) -> None:
        """
        sequence_outputs: outputs with a sequence axis 1, cut back to each row's length (the
          runtime's `sequence_outputs`). None: guessed as "axis 1 equals the padded length", which
          is ambiguous for a classifier whose label count equals a batch's padded length.
        executor: None (the default) creates one owned by the batcher with one thread per
          in-flight batch; one passed in is not shut down by `stop`.
        """
        self.name = name
        self.policy = policy
        self._run = run
        self._pad = pad_token_id
        self.max_batch_size = policy.max_batch_size
        self.max_queue_size = policy.max_queue_size
        self.max_inflight_batches = policy.max_inflight_batches
        self.max_queue_delay_s = max(0.0, policy.max_queue_delay_ms) / 1000.0
        sort_window = 4 * policy.max_batch_size if policy.sort_window is None else policy.sort_window
        self._fifo = sort_window == 0
        self._window_size = policy.max_batch_size if self._fifo else max(sort_window, policy.max_batch_size)
        self._sequence_outputs = None if sequence_outputs is None else frozenset(sequence_outputs)
        self._observer: BatchObserver = observer or NullObserver()
        self._owns_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(
            max_workers=policy.max_inflight_batches, thread_name_prefix=f"batcher-{name}"
        )
        self.failure_threshold = failure_threshold
        self.probe_interval_s = probe_interval_s

        # Requests with rows in the queue, least recently served first (new ones join at the end).
        self._waiting: OrderedDict[_Request, None] = OrderedDict()
        self._depth = 0  # rows in the queue
        self._inflight = 0
        self._inflight_tasks: set[asyncio.Task[None]] = set()
        # One batch more than there are threads: while every thread is busy the loop stages the
        # next (full) batch in the executor's queue, so the model starts it the moment a thread
        # frees up, without waiting for the event loop to notice.
        self._slots = asyncio.Semaphore(policy.max_inflight_batches + 1)
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepting = True
        self._stopped = False
        self._died = False
        self._restarts: deque[float] = deque()
        self._batch_seconds_ewma: float | None = None
        self.executions = 0  # model runs that succeeded (Triton's execution_count)
        self.consecutive_failures = 0
        self._probe: asyncio.Task[None] | None = None

    # -- public ------------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Rows waiting in the queue (not those running)."""
        return self._depth

    @property
    def inflight_batches(self) -> int:
        return self._inflight

    @property
    def alive(self) -> bool:
        """False once the batching loop died for good: liveness must report it."""
        return not self._died

    @property
    def healthy(self) -> bool:
        """Alive and its model runs are not failing in a row: readiness must report it."""
        return not self._died and self.consecutive_failures < self.failure_threshold

    @property
    def accepting(self) -> bool:
        return self._accepting and not self._died

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        if self._task is not None:
            return
        if self._stopped:
            raise RuntimeError(f"batcher {self.name} was stopped; create a new one")
        self._loop = asyncio.get_running_loop()
        self._start_loop()

    def _start_loop(self) -> None:
        assert self._loop is not None
        self._task = self._loop.create_task(self._batch_loop(), name=f"batcher-{self.name}")
        self._task.add_done_callback(self._on_loop_exit)

    def check_capacity(self) -> None:
        """Refuse (429) while the queue is full: a request would be tokenized only to be refused."""
        if not self.accepting:
            why = "is shutting down" if not self._died else "is not running (its batching loop failed)"
            raise ServeError(ErrorKind.UNAVAILABLE, f"model {self.name} {why}")
        if self._depth >= self.max_queue_size:
            self._notify(self._observer.on_drop, "overload")
            raise self._overloaded()

    def _overloaded(self) -> ServeError:
        return ServeError(
            ErrorKind.OVERLOADED,
            f"model {self.name} is overloaded: {self._depth} inputs queued (max {self.max_queue_size})",
            retry_after_s=self._retry_after(),
        )

    async def submit(self, rows: Sequence[Row], deadline: float | None = None) -> SubmitResult:
        """Run rows through the model (possibly batched with other requests' rows).

        deadline: a `time.monotonic()` instant; rows that have not started by then are dropped.
        """
        if not rows:
            return SubmitResult([], 0.0, 0.0)
        request = self.enqueue(rows, deadline)
        assert request.future is not None
        try:
            return await request.future
        except asyncio.CancelledError:
            self.abandon(request)  # the client went away: what of its work has not started never will
            raise

    def enqueue(self, rows: Sequence[Row], deadline: float | None = None) -> _Request:
        """`submit` without a coroutine (for the model owner, which answers many requests from
        callbacks): the request's `future` resolves to its SubmitResult; `abandon` it to give up.
        Refusals (overload, too large, deadline passed, shutting down) raise at once."""
        if self._task is None and not self._stopped:
            self.start()
        if not self.accepting:
            why = "is shutting down" if not self._died else "is not running (its batching loop failed)"
            raise ServeError(ErrorKind.UNAVAILABLE, f"model {self.name} {why}")
        n = len(rows)
        for row in rows:
            if len(row) == 0 or row.input_ids.ndim != 1 or row.token_type_ids.shape != row.input_ids.shape:
                raise ServeError(
                    ErrorKind.INTERNAL,
                    f"malformed model input: input_ids {row.input_ids.shape}, "
                    f"token_type_ids {row.token_type_ids.shape}",
                )
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            self._notify(self._observer.on_drop, "deadline")
            raise ServeError(ErrorKind.DEADLINE_EXCEEDED, "the request's deadline passed before it was queued")
        share = self.policy.request_rows_limit
        if n > share:
            raise too_large(
                f"the request needs {n} model inputs; one request may queue at most {share} "
                f"(a share of the queue of {self.max_queue_size})"
            )
        if self._depth + n > self.max_queue_size:
            self._notify(self._observer.on_drop, "overload")
            raise self._overloaded()

        assert self._loop is not None
        request = _Request(
            rows=rows,
            future=self._loop.create_future(),
            deadline=deadline,
            submitted=now,
            outputs=[None] * n,
            unfinished=n,
        )
        request.pending.extend(_Entry(request, i, len(row)) for i, row in enumerate(rows))
        self._waiting[request] = None
        self._set_depth(self._depth + n)
        self._idle.clear()
        self._wakeup.set()
        if deadline is not None:
            request.timer = self._loop.call_later(max(0.0, deadline - now), self._expire, request)
        return request

    def abandon(self, request: _Request) -> None:
        """Nobody waits for this request any more: its queued rows leave, its outputs are ignored."""
        if not request.closed:
            dropped = self._close(request)
            if dropped:
                self._notify(self._observer.on_drop, "cancelled")
            self._update_idle()
        if request.future is not None and not request.future.done():
            request.future.cancel()

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Refuse new work, finish what was accepted (bounded), then release the executor."""
        if self._stopped:
            return
        self._accepting = False
        self._wakeup.set()  # a loop waiting out the queue delay cuts at once while draining
        if self._task is not None and not self._task.done():
            try:
                async with asyncio.timeout(drain_timeout_s):
                    await self._idle.wait()
            except TimeoutError:
                log.warning(
                    "batcher %s: drain timed out after %.1fs with %d rows queued and %d batches running",
                    self.name,
                    drain_timeout_s,
                    self._depth,
                    self._inflight,
                )
        self._stopped = True
        if self._probe is not None:
            self._probe.cancel()
        self._fail_queued(ServeError(ErrorKind.UNAVAILABLE, f"model {self.name} stopped before this request ran"))
        if self._task is not None and not self._task.done():  # a dead loop was already reported
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._inflight_tasks):
            task.cancel()
        if self._inflight_tasks:
            await asyncio.gather(*self._inflight_tasks, return_exceptions=True)
        if self._owns_executor:
            # Drained batches are done; a batch stuck past the timeout cannot be killed, only left.
            self._executor.shutdown(wait=False, cancel_futures=True)

    # -- the loop ----------------------------------------------------------------------------

    async def _batch_loop(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                entries = await self._next_batch()
            except BaseException:
                self._slots.release()
                raise
            try:
                self._dispatch(entries)
            except Exception:  # entries are off the queue: answer them here, keep the loop alive
                self._slots.release()
                log.exception("batcher %s: could not assemble a batch", self.name)
                error = ServeError(ErrorKind.INTERNAL, "could not assemble a batch")
                for request in dict.fromkeys(e.request for e in entries):
                    self._fail(request, error)
                self._update_idle()

    async def _next_batch(self) -> list[_Entry]:
        """Wait until a batch is worth cutting, then take its entries off the queue."""
        while True:
            self._wakeup.clear()
            now = time.monotonic()
            window = self._window(now)
            if not window:
                self._update_idle()
                await self._wakeup.wait()
                continue
            chosen, full = self._select(window)
            full = full or self._depth > len(window)
            wait = window[0].request.submitted + self.max_queue_delay_s - now
            # A partial batch is only cut when a thread can run it now: until then it may still grow.
            thread_free = self._inflight < self.max_inflight_batches
            if full or (thread_free and (not self._accepting or wait <= 0)):
                self._remove(chosen)
                return chosen
            if not thread_free:
                await self._wakeup.wait()  # a new row or a finished batch
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wakeup.wait()

    def _window(self, now: float) -> list[_Entry]:
        """Up to a sort window of queued rows, taken from the waiting requests in turn: the request
        served least recently first (a new one joins at the end), one row of each per round. The
        first row anchors the next batch, so a request of many rows gets one batch in turn with the
        others instead of all of them first. Requests whose deadline passed are dropped here."""
        waiting: list[_Request] = []
        expired: list[_Request] = []
        for request in self._waiting:
            if request.deadline is not None and request.deadline <= now:
                expired.append(request)
                continue
            waiting.append(request)
            if len(waiting) >= self._window_size:
                break
        for request in expired:
            self._expire(request)
        window: list[_Entry] = []
        size = self._window_size
        for depth in range(size):
            took = False
            for request in waiting:
                if depth < len(request.pending):
                    window.append(request.pending[depth])
                    took = True
                    if len(window) >= size:
                        return window
            if not took:
                break
        return window

    def _select(self, window: list[_Entry]) -> tuple[list[_Entry], bool]:
        """Rows for the next batch (always including the oldest) and whether a limit was reached."""
        max_rows = self.max_batch_size
        max_padding = self.policy.max_padding_ratio
        # Padding limit as a bound on padded tokens: rows x longest <= real / (1 - ratio).
        slack = None if max_padding is None else 1.0 / (1.0 - max_padding)
        if self._fifo:
            chosen: list[_Entry] = []
            longest = real = 0
            for entry in window:
                longest_if = max(longest, entry.length)
                padded_if = (len(chosen) + 1) * longest_if
                too_big = self._too_big(len(chosen) + 1, longest_if)
                if chosen and (too_big or (slack is not None and padded_if > slack * (real + entry.length))):
                    return chosen, too_big
                chosen.append(entry)
                longest = longest_if
                real += entry.length
                if len(chosen) == max_rows:
                    return chosen, True
            return chosen, False

        # Sort the window by length (ties keep window order) and grow a contiguous run around
        # the oldest row, always taking the neighbour closest in length: similar lengths end up
        # together, and rows far from this batch's length stay for a batch of their own.
        order = sorted(window, key=lambda e: e.length)  # stable: the oldest comes first among equals
        lo = hi = order.index(window[0])
        shortest = longest = real = window[0].length
        while hi - lo + 1 < max_rows:
            count = hi - lo + 2
            candidates = []
            if lo > 0:
                left = order[lo - 1].length
                candidates.append((shortest - left, 0, longest, left))
            if hi + 1 < len(order):
                right = order[hi + 1].length
                candidates.append((right - longest, 1, right, right))
            if not candidates:
                return order[lo : hi + 1], False
            for _, side, longest_if, length in sorted(candidates):
                if self._too_big(count, longest_if):
                    continue
                if slack is not None and count * longest_if > slack * (real + length):
                    continue
                if side == 0:
                    lo -= 1
                    shortest = length
                else:
                    hi += 1
                    longest = longest_if
                real += length
                break
            else:
                # Held back by padding, the batch is as good as the queue allows: cut it now (and
                # stage it while every thread is busy) rather than idle a thread for rows that
                # would rarely fit better.
                return order[lo : hi + 1], True
        return order[lo : hi + 1], True

    def _too_big(self, rows: int, longest: int) -> bool:
        """Whether a batch of `rows` padded to `longest` passes the token or attention limit."""
        padded = rows * longest
        cells = self.policy.max_batch_attention
        return padded > self.policy.max_batch_tokens or (cells is not None and padded * longest > cells)

    def _remove(self, chosen: list[_Entry]) -> None:
        """Take the chosen entries off their requests' queues (each among the first of its request);
        a request with rows left goes behind the requests that got none this time."""
        by_request: dict[_Request, set[int]] = {}
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

    def _dispatch(self, entries: list[_Entry]) -> None:
        self._set_depth(self._depth - len(entries))
        arrays = self._pad_rows(entries)
        real_tokens = sum(e.length for e in entries)

        self._inflight += 1
        assert self._loop is not None
        try:
            future = self._loop.run_in_executor(self._executor, self._timed_run, entries, *arrays)
        except BaseException:
            future = self._loop.create_future()
            future.set_exception(RuntimeError("the inference executor is shut down"))
        task = self._loop.create_task(self._complete(entries, future, real_tokens, arrays[0].size))
        self._inflight_tasks.add(task)
        task.add_done_callback(self._inflight_tasks.discard)

    def _pad_rows(self, entries: Sequence[_Entry]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows, width = len(entries), max(e.length for e in entries)
        input_ids = np.full((rows, width), self._pad, dtype=np.int64)
        attention_mask = np.zeros((rows, width), dtype=np.int64)
        token_type_ids = np.zeros((rows, width), dtype=np.int64)
        for j, entry in enumerate(entries):
            row, n = entry.request.rows[entry.index], entry.length
            input_ids[j, :n] = row.input_ids
            attention_mask[j, :n] = 1
            token_type_ids[j, :n] = row.token_type_ids
        return input_ids, attention_mask, token_type_ids

    def _timed_run(
        self,
        entries: list[_Entry],
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        token_type_ids: np.ndarray,
    ) -> _Outcome | None:
        """On the executor thread: each row's outputs (or its error); None when nobody waits any more."""
        started = time.monotonic()
        # A staged batch whose requests were all cancelled or failed meanwhile is not worth running.
        # (Reading the flags from this thread is a benign race: at worst the batch runs for nothing.)
        if all(e.request.closed for e in entries):
            return None
        t0 = time.perf_counter()
        outcome = _Outcome([None] * len(entries), [None] * len(entries), started, 0.0)
        self._run_part(entries, list(range(len(entries))), (input_ids, attention_mask, token_type_ids), outcome)
        outcome.seconds = time.perf_counter() - t0
        return outcome

    def _run_part(
        self,
        entries: list[_Entry],
        positions: list[int],
        arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
        outcome: _Outcome,
    ) -> None:
        """Run these rows as one batch; when that fails, run them again in smaller parts: halves
        after an out-of-memory error (the batch may simply be too big), else one row at a time
        (to find the rows that fail), so that only failing rows fail."""
        part = [entries[p] for p in positions]
        if arrays is None:
            arrays = self._pad_rows(part)
        try:
            outputs = self._run(*arrays)
            for position, row_outputs in zip(positions, self._split(outputs, part), strict=True):
                outcome.outputs[position] = row_outputs
            return
        except Exception as exc:
            oom = is_out_of_memory(exc)
            outcome.failed_runs.append("oom" if oom else "error")
            if len(positions) == 1:
                log.error("batcher %s: a model run of one row failed: %r", self.name, exc)
                outcome.errors[positions[0]] = exc
                return
            log.warning(
                "batcher %s: a batch of %d rows failed (%s); running it again in %s",
                self.name,
                len(positions),
                "out of memory" if oom else repr(exc),
                "halves" if oom else "single rows",
            )
            outcome.retried_rows += len(positions)
        parts = (
            [positions[: len(positions) // 2], positions[len(positions) // 2 :]] if oom else [[p] for p in positions]
        )
        for sub in parts:
            self._run_part(entries, sub, None, outcome)

    async def _complete(
        self,
        entries: list[_Entry],
        future: asyncio.Future[_Outcome | None],
        real_tokens: int,
        padded_tokens: int,
    ) -> None:
        outcome: _Outcome | None = None
        error: ServeError | None = None
        try:
            outcome = await future
            if outcome is None:
                error = ServeError(ErrorKind.CANCELLED, "every request of this batch went away")
                return
            for entry in entries:
                request = entry.request
                request.started = outcome.started if request.started is None else min(request.started, outcome.started)
            self._account(outcome, len(entries), real_tokens, padded_tokens)
        except asyncio.CancelledError:
            error = ServeError(ErrorKind.UNAVAILABLE, f"model {self.name} stopped before this batch finished")
            raise
        except Exception:
            log.exception("batcher %s: a batch of %d rows failed", self.name, len(entries))
            error = ServeError(ErrorKind.INTERNAL, "inference failed")
        finally:
            self._inflight -= 1
            self._slots.release()
            self._wakeup.set()  # a thread is free: a waiting partial batch may go now
            if outcome is not None:
                self._deliver(entries, outcome)
            else:
                failed = error or ServeError(ErrorKind.INTERNAL, "inference failed")
                for request in dict.fromkeys(e.request for e in entries):
                    self._fail(request, failed)
            self._update_idle()

    def _account(self, outcome: _Outcome, rows: int, real_tokens: int, padded_tokens: int) -> None:
        for kind in outcome.failed_runs:
            self._notify(self._observer.on_failure, kind)
        if outcome.retried_rows:
            self._notify(self._observer.on_retry, outcome.retried_rows)
        if any(e is None for e in outcome.errors):
            self.executions += 1
            self._notify(self._observer.on_batch, rows, real_tokens, padded_tokens, outcome.seconds)
            self._batch_seconds_ewma = (
                outcome.seconds
                if self._batch_seconds_ewma is None
                else 0.8 * self._batch_seconds_ewma + 0.2 * outcome.seconds
            )
        if all(e is not None for e in outcome.errors):
            self._record_failure()
        elif self.consecutive_failures:
            if self.consecutive_failures >= self.failure_threshold:
                log.info("batcher %s: model runs succeed again", self.name)
            self.consecutive_failures = 0

    def _record_failure(self) -> None:
        self.consecutive_failures += 1
        if self.consecutive_failures == self.failure_threshold:
            log.error(
                "batcher %s: %d model runs failed in a row: not ready until a run succeeds",
                self.name,
                self.consecutive_failures,
            )
            if self._probe is None or self._probe.done():
                assert self._loop is not None
                self._probe = self._loop.create_task(self._probe_until_healthy(), name=f"probe-{self.name}")

    async def _probe_until_healthy(self) -> None:
        """While unhealthy, try a one-row run now and then: traffic may have stopped (readiness is
        false), so nothing else would ever show that the model works again."""
        probe = np.full((1, 8), self._pad, dtype=np.int64)
        ones = np.ones_like(probe)
        assert self._loop is not None
        while not self.healthy and not self._stopped:
            await asyncio.sleep(self.probe_interval_s)
            if self.healthy or self._stopped:
                return
            try:
                await self._loop.run_in_executor(self._executor, self._run, probe, ones, np.zeros_like(probe))
            except Exception as exc:
                self._notify(self._observer.on_failure, "oom" if is_out_of_memory(exc) else "error")
                continue
            log.info("batcher %s: a probe run succeeded: ready again", self.name)
            self.consecutive_failures = 0

    def _split(self, outputs: dict[str, np.ndarray], entries: list[_Entry]) -> list[RowOutputs]:
        rows, width = len(entries), max(e.length for e in entries)
        for name, array in outputs.items():
            if array.ndim == 0 or array.shape[0] != rows:
                raise ValueError(f"output {name} has shape {array.shape}, expected {rows} rows first")
        sequence = self._sequence_outputs
        if sequence is None:
            sequence = frozenset(n for n, a in outputs.items() if a.ndim >= 2 and a.shape[1] == width)
        return [
            {name: array[j, : e.length] if name in sequence else array[j] for name, array in outputs.items()}
            for j, e in enumerate(entries)
        ]

    # -- answering requests ------------------------------------------------------------------

    def _deliver(self, entries: list[_Entry], outcome: _Outcome) -> None:
        now = time.monotonic()
        for entry, outputs, error in zip(entries, outcome.outputs, outcome.errors, strict=True):
            request = entry.request
            if request.closed:
                continue
            if error is not None or outputs is None:
                # The detail is in the log; the client gets the error table's INTERNAL (with a request id).
                self._fail(request, ServeError(ErrorKind.INTERNAL, "the model failed on this input"))
                continue
            request.outputs[entry.index] = outputs
            request.unfinished -= 1
            if request.unfinished == 0:
                self._close(request)
                started = request.started if request.started is not None else now
                if request.future is not None and not request.future.done():
                    request.future.set_result(
                        SubmitResult(
                            outputs=request.outputs,  # type: ignore[arg-type]  # all filled now
                            queue_seconds=started - request.submitted,
                            inference_seconds=now - started,
                        )
                    )

    def _close(self, request: _Request) -> int:
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

    def _fail(self, request: _Request, error: ServeError) -> None:
        if request.closed:
            return
        self._close(request)
        if request.future is not None and not request.future.done():
            request.future.set_exception(error)

    def _expire(self, request: _Request) -> None:
        """Deadline reached: fail the request if some of its rows have not started yet."""
        if request.closed or not request.pending:
            return  # everything already runs: let it finish
        waited = time.monotonic() - request.submitted
        self._close(request)
        self._notify(self._observer.on_drop, "deadline")
        if request.future is not None and not request.future.done():
            request.future.set_exception(
                ServeError(
                    ErrorKind.DEADLINE_EXCEEDED,
                    f"the request's deadline passed after {waited:.3f}s waiting for model {self.name}",
                )
            )
        self._update_idle()

    def _fail_queued(self, error: ServeError) -> None:
        for request in list(self._waiting):
            self._fail(request, error)
        self._update_idle()

    def _on_loop_exit(self, task: asyncio.Task[None]) -> None:
        if self._stopped:
            return
        error = None if task.cancelled() else task.exception()
        now = time.monotonic()
        if error is None:
            # Cancelled from outside without stop(): the event loop is going away; nothing to restart.
            self._died = True
            self._accepting = False
            self._fail_queued(ServeError(ErrorKind.UNAVAILABLE, f"model {self.name} is not running"))
            return
        while self._restarts and now - self._restarts[0] > RESTART_WINDOW_S:
            self._restarts.popleft()
        if len(self._restarts) < MAX_RESTARTS:
            self._restarts.append(now)
            log.error("batcher %s: the batching loop ended unexpectedly (%r); restarting it", self.name, error)
            self._notify(self._observer.on_restart)
            # What was queued may be what broke it: those requests get an error (clients retry),
            # the loop starts again on an empty queue. (The dead iteration gave its slot back.)
            self._fail_queued(ServeError(ErrorKind.UNAVAILABLE, f"model {self.name} restarted its batching loop", 1.0))
            self._start_loop()
            return
        self._died = True
        self._accepting = False
        log.error("batcher %s: the batching loop keeps failing (%r): the model is dead", self.name, error)
        self._fail_queued(ServeError(ErrorKind.UNAVAILABLE, f"model {self.name} is not running"))

    # -- bookkeeping -------------------------------------------------------------------------

    def _retry_after(self) -> float:
        """Seconds until the queue has likely drained enough, from recent batch times."""
        if self._batch_seconds_ewma is None:
            return 1.0
        batches = math.ceil(self._depth / self.max_batch_size) / self.max_inflight_batches
        return float(max(1, math.ceil(batches * self._batch_seconds_ewma)))

    def _set_depth(self, depth: int) -> None:
        self._depth = depth
        self._notify(self._observer.on_queue_depth, depth)

    def _update_idle(self) -> None:
        if self._depth == 0 and self._inflight == 0:
            self._idle.set()

    def _notify(self, hook: Callable[..., None], *args: object) -> None:
        try:
            hook(*args)
        except Exception:  # metrics must never break serving
            log.exception("batcher %s: observer hook %s failed", self.name, getattr(hook, "__name__", hook))
