"""The dynamic batcher: one per model, one asyncio task owning its queue.

Requests hand in rows (unpadded token sequences). The loop waits for the first row, then up
to `max_queue_delay_ms` (counted from the oldest queued row, as Triton does) for more, and
cuts a batch bounded by `max_batch_size` rows and `max_batch_tokens` padded tokens (rows x
longest row: the model pads, so that is what it computes), and optionally by attention cells
(rows x longest row squared). Rows within a sort window are grouped by length to cut padding,
but every batch contains the oldest queued row, so no row starves. Expired and abandoned rows
are dropped before they reach the model. The model runs on a dedicated executor thread; while
every thread is busy, the next batch is staged only once it is full (a partial one keeps growing
until a thread frees up). Results are scattered back to each request, and every request ends
with a result or an error, never waiting forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from server.core.errors import ErrorKind, ServeError
from server.core.rows import Row, RowOutputs

log = logging.getLogger(__name__)

RunFn = Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, np.ndarray]]


class BatchObserver(Protocol):
    """Metrics hooks; called on the event loop thread, must be cheap and must not raise."""

    def on_batch(self, model_rows: int, real_tokens: int, padded_tokens: int, seconds: float) -> None: ...

    def on_drop(self, reason: str, n_rows: int) -> None: ...  # reason: deadline | cancelled | overload

    def on_queue_depth(self, n: int) -> None: ...


class NullObserver:
    def on_batch(self, model_rows: int, real_tokens: int, padded_tokens: int, seconds: float) -> None:
        pass

    def on_drop(self, reason: str, n_rows: int) -> None:
        pass

    def on_queue_depth(self, n: int) -> None:
        pass


@dataclass(slots=True)
class SubmitResult:
    outputs: list[RowOutputs]  # same order as the submitted rows, padding removed
    queue_seconds: float  # submit -> first of its rows started running
    inference_seconds: float  # first of its rows started -> last one finished


@dataclass(eq=False, slots=True)
class _Request:
    rows: Sequence[Row]
    future: asyncio.Future[SubmitResult]
    deadline: float | None
    submitted: float
    outputs: list[RowOutputs | None]
    queued: int  # rows still in the queue
    unfinished: int  # rows without an output yet
    started: float | None = None
    timer: asyncio.TimerHandle | None = None
    # Answered or abandoned: its rows left in the queue are dead and skipped (removed lazily).
    closed: bool = False


@dataclass(eq=False, slots=True)
class _Entry:
    request: _Request
    index: int
    length: int


class DynamicBatcher:
    def __init__(
        self,
        run: RunFn,
        *,
        pad_token_id: int = 0,
        max_batch_size: int = 32,
        max_batch_tokens: int = 16384,
        max_batch_attention: int | None = None,
        max_queue_delay_ms: float = 5.0,
        max_queue_size: int = 1024,
        max_inflight_batches: int = 1,
        sort_window: int | None = None,
        max_padding_ratio: float | None = None,
        sequence_outputs: Collection[str] | None = None,
        observer: BatchObserver | None = None,
        executor: ThreadPoolExecutor | None = None,
        name: str = "model",
    ) -> None:
        """
        max_batch_attention: most rows x longest row^2 (each head's attention scores) in a batch;
          None: no limit. On a CPU long rows run faster alone than together (the scores fall out
          of the cache), while short rows still gain from batching.
        sort_window: how many queued rows (oldest first) are length-grouped together; None: four
          batches' worth; 0: strict FIFO.
        max_padding_ratio: a batch stops growing before its padding (padded tokens / all tokens)
          would pass this; None: no limit. On a CPU a padded token costs as much as a real one
          and batching gains little, so a few rows of close lengths beat many of mixed lengths;
          on a GPU bigger batches pay for some padding.
        sequence_outputs: outputs with a sequence axis 1, cut back to each row's length (the
          runtime's `sequence_outputs`). None: guessed as "axis 1 equals the padded length", which
          is ambiguous for a classifier whose label count equals a batch's padded length.
        executor: None (the default) creates one owned by the batcher with one thread per
          in-flight batch; one passed in is not shut down by `stop`.
        """
        for knob, value in (
            ("max_batch_size", max_batch_size),
            ("max_batch_tokens", max_batch_tokens),
            ("max_queue_size", max_queue_size),
            ("max_inflight_batches", max_inflight_batches),
        ):
            if value < 1:
                raise ValueError(f"{knob} must be >= 1, got {value}")
        self.name = name
        self._run = run
        self._pad = pad_token_id
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        if max_batch_attention is not None and max_batch_attention < 1:
            raise ValueError(f"max_batch_attention must be >= 1 or None, got {max_batch_attention}")
        self.max_batch_attention = max_batch_attention
        self.max_queue_delay_s = max(0.0, max_queue_delay_ms) / 1000.0
        self.max_queue_size = max_queue_size
        self.max_inflight_batches = max_inflight_batches
        if sort_window is None:
            sort_window = 4 * max_batch_size
        if max_padding_ratio is not None and not 0 <= max_padding_ratio < 1:
            raise ValueError(f"max_padding_ratio must be within [0, 1), got {max_padding_ratio}")
        self.max_padding_ratio = max_padding_ratio
        self._fifo = sort_window == 0
        self._window_size = max_batch_size if self._fifo else max(sort_window, max_batch_size)
        self._sequence_outputs = None if sequence_outputs is None else frozenset(sequence_outputs)
        self._observer: BatchObserver = observer or NullObserver()
        self._owns_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(
            max_workers=max_inflight_batches, thread_name_prefix=f"batcher-{name}"
        )

        self._queue: deque[_Entry] = deque()
        self._depth = 0  # live rows in the queue
        self._inflight = 0
        self._inflight_tasks: set[asyncio.Task[None]] = set()
        # One batch more than there are threads: while every thread is busy the loop stages the
        # next (full) batch in the executor's queue, so the model starts it the moment a thread
        # frees up, without waiting for the event loop to notice.
        self._slots = asyncio.Semaphore(max_inflight_batches + 1)
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepting = True
        self._stopped = False
        self._died = False
        self._batch_seconds_ewma: float | None = None

    # -- public ------------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Rows waiting in the queue (not those running)."""
        return self._depth

    @property
    def inflight_batches(self) -> int:
        return self._inflight

    @property
    def healthy(self) -> bool:
        """False once the batching loop died unexpectedly: health checks must report it."""
        return not self._died

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
        self._task = self._loop.create_task(self._batch_loop(), name=f"batcher-{self.name}")
        self._task.add_done_callback(self._on_loop_exit)

    async def submit(self, rows: Sequence[Row], deadline: float | None = None) -> SubmitResult:
        """Run rows through the model (possibly batched with other requests' rows).

        deadline: a `time.monotonic()` instant; rows that have not started by then are dropped.
        """
        if self._task is None and not self._stopped:
            self.start()
        if not self.accepting:
            why = "is shutting down" if not self._died else "is not running (its batching loop failed)"
            raise ServeError(ErrorKind.UNAVAILABLE, f"model {self.name} {why}")
        n = len(rows)
        if n == 0:
            return SubmitResult([], 0.0, 0.0)
        for row in rows:
            if len(row) == 0 or row.input_ids.ndim != 1 or row.token_type_ids.shape != row.input_ids.shape:
                raise ServeError(
                    ErrorKind.INTERNAL,
                    f"malformed model input: input_ids {row.input_ids.shape}, "
                    f"token_type_ids {row.token_type_ids.shape}",
                )
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            self._notify(self._observer.on_drop, "deadline", n)
            raise ServeError(ErrorKind.DEADLINE_EXCEEDED, "the request's deadline passed before it was queued")
        if n > self.max_queue_size:
            raise ServeError(
                ErrorKind.TOO_LARGE,
                f"the request needs {n} model inputs, more than the queue holds ({self.max_queue_size})",
            )
        if self._depth + n > self.max_queue_size:
            self._notify(self._observer.on_drop, "overload", n)
            raise ServeError(
                ErrorKind.OVERLOADED,
                f"model {self.name} is overloaded: {self._depth} inputs queued (max {self.max_queue_size})",
                retry_after_s=self._retry_after(),
            )

        assert self._loop is not None
        request = _Request(
            rows=rows,
            future=self._loop.create_future(),
            deadline=deadline,
            submitted=now,
            outputs=[None] * n,
            queued=n,
            unfinished=n,
        )
        self._queue.extend(_Entry(request, i, len(row)) for i, row in enumerate(rows))
        self._set_depth(self._depth + n)
        self._idle.clear()
        self._wakeup.set()
        if deadline is not None:
            request.timer = self._loop.call_later(max(0.0, deadline - now), self._expire, request)
        try:
            return await request.future
        except asyncio.CancelledError:
            # The client went away: whatever of its work has not started never will.
            if not request.closed:
                dropped = self._close(request)
                if dropped:
                    self._notify(self._observer.on_drop, "cancelled", dropped)
                self._update_idle()
            raise

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
            except Exception as exc:  # entries are off the queue: answer them here, keep the loop alive
                self._slots.release()
                log.exception("batcher %s: could not assemble a batch", self.name)
                error = ServeError(ErrorKind.INTERNAL, f"could not assemble a batch: {exc}")
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
        """The oldest live rows, at most a sort window's worth; expired requests are dropped here."""
        queue = self._queue
        while queue and queue[0].request.closed:
            queue.popleft()
        window: list[_Entry] = []
        expired: list[_Request] = []
        for entry in queue:
            request = entry.request
            if request.closed:
                continue
            if request.deadline is not None and request.deadline <= now:
                expired.append(request)
                continue
            window.append(entry)
            if len(window) >= self._window_size:
                break
        for request in expired:
            self._expire(request)
        return window

    def _select(self, window: list[_Entry]) -> tuple[list[_Entry], bool]:
        """Rows for the next batch (always including the oldest) and whether a limit was reached."""
        max_rows = self.max_batch_size
        # Padding limit as a bound on padded tokens: rows x longest <= real / (1 - ratio).
        slack = None if self.max_padding_ratio is None else 1.0 / (1.0 - self.max_padding_ratio)
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

        # Sort the window by length (ties keep arrival order) and grow a contiguous run around
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
        cells = self.max_batch_attention
        return padded > self.max_batch_tokens or (cells is not None and padded * longest > cells)

    def _remove(self, chosen: list[_Entry]) -> None:
        """Take the chosen entries off the queue (they all sit within its first window)."""
        pending = set(chosen)
        kept: list[_Entry] = []
        while pending:
            entry = self._queue.popleft()
            if entry in pending:
                pending.discard(entry)
            elif not entry.request.closed:
                kept.append(entry)
        self._queue.extendleft(reversed(kept))

    def _dispatch(self, entries: list[_Entry]) -> None:
        for entry in entries:
            entry.request.queued -= 1
        self._set_depth(self._depth - len(entries))
        rows, width = len(entries), max(e.length for e in entries)
        input_ids = np.full((rows, width), self._pad, dtype=np.int64)
        attention_mask = np.zeros((rows, width), dtype=np.int64)
        token_type_ids = np.zeros((rows, width), dtype=np.int64)
        for j, entry in enumerate(entries):
            row, n = entry.request.rows[entry.index], entry.length
            input_ids[j, :n] = row.input_ids
            attention_mask[j, :n] = 1
            token_type_ids[j, :n] = row.token_type_ids
        real_tokens = sum(e.length for e in entries)

        self._inflight += 1
        assert self._loop is not None
        try:
            future = self._loop.run_in_executor(
                self._executor, self._timed_run, entries, input_ids, attention_mask, token_type_ids
            )
        except BaseException:
            future = self._loop.create_future()
            future.set_exception(RuntimeError("the inference executor is shut down"))
        task = self._loop.create_task(self._complete(entries, future, real_tokens, rows * width))
        self._inflight_tasks.add(task)
        task.add_done_callback(self._inflight_tasks.discard)

    def _timed_run(
        self,
        entries: list[_Entry],
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        token_type_ids: np.ndarray,
    ) -> tuple[dict[str, np.ndarray] | None, float, float]:
        """On the executor thread: (outputs, monotonic start, seconds); None when nobody waits any more."""
        started = time.monotonic()
        # A staged batch whose requests were all cancelled or failed meanwhile is not worth running.
        # (Reading the flags from this thread is a benign race: at worst the batch runs for nothing.)
        if all(e.request.closed for e in entries):
            return None, started, 0.0
        t0 = time.perf_counter()
        outputs = self._run(input_ids, attention_mask, token_type_ids)
        return outputs, started, time.perf_counter() - t0

    async def _complete(
        self,
        entries: list[_Entry],
        future: asyncio.Future[tuple[dict[str, np.ndarray] | None, float, float]],
        real_tokens: int,
        padded_tokens: int,
    ) -> None:
        results: list[RowOutputs] | None = None
        error: ServeError | None = None
        try:
            outputs, started, seconds = await future
            if outputs is None:
                error = ServeError(ErrorKind.CANCELLED, "every request of this batch went away")
                return
            for entry in entries:
                request = entry.request
                request.started = started if request.started is None else min(request.started, started)
            results = self._split(outputs, entries)
            self._notify(self._observer.on_batch, len(entries), real_tokens, padded_tokens, seconds)
            self._batch_seconds_ewma = (
                seconds if self._batch_seconds_ewma is None else 0.8 * self._batch_seconds_ewma + 0.2 * seconds
            )
        except asyncio.CancelledError:
            error = ServeError(ErrorKind.UNAVAILABLE, f"model {self.name} stopped before this batch finished")
            raise
        except ServeError as exc:
            error = exc
        except Exception as exc:
            log.exception("batcher %s: a batch of %d rows failed", self.name, len(entries))
            error = ServeError(ErrorKind.INTERNAL, f"inference failed: {type(exc).__name__}: {exc}")
        finally:
            self._inflight -= 1
            self._slots.release()
            self._wakeup.set()  # a thread is free: a waiting partial batch may go now
            if results is not None:
                self._deliver(entries, results)
            else:
                failed = error or ServeError(ErrorKind.INTERNAL, "inference failed")
                for request in dict.fromkeys(e.request for e in entries):
                    self._fail(request, failed)
            self._update_idle()

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

    def _deliver(self, entries: list[_Entry], results: list[RowOutputs]) -> None:
        now = time.monotonic()
        for entry, outputs in zip(entries, results, strict=True):
            request = entry.request
            if request.closed:
                continue
            request.outputs[entry.index] = outputs
            request.unfinished -= 1
            if request.unfinished == 0:
                self._close(request)
                started = request.started if request.started is not None else now
                if not request.future.done():
                    request.future.set_result(
                        SubmitResult(
                            outputs=request.outputs,  # type: ignore[arg-type]  # all filled now
                            queue_seconds=started - request.submitted,
                            inference_seconds=now - started,
                        )
                    )

    def _close(self, request: _Request) -> int:
        """Mark a request answered or abandoned; returns how many of its rows left the queue."""
        request.closed = True
        if request.timer is not None:
            request.timer.cancel()
            request.timer = None
        dropped, request.queued = request.queued, 0
        if dropped:
            self._set_depth(self._depth - dropped)
        return dropped

    def _fail(self, request: _Request, error: ServeError) -> None:
        if request.closed:
            return
        self._close(request)
        if not request.future.done():
            request.future.set_exception(error)

    def _expire(self, request: _Request) -> None:
        """Deadline reached: fail the request if some of its rows have not started yet."""
        if request.closed or request.queued == 0:
            return  # everything already runs: let it finish
        waited = time.monotonic() - request.submitted
        dropped = self._close(request)
        self._notify(self._observer.on_drop, "deadline", dropped)
        if not request.future.done():
            request.future.set_exception(
                ServeError(
                    ErrorKind.DEADLINE_EXCEEDED,
                    f"the request's deadline passed after {waited:.3f}s waiting for model {self.name}",
                )
            )
        self._update_idle()

    def _fail_queued(self, error: ServeError) -> None:
        for request in dict.fromkeys(e.request for e in self._queue):
            self._fail(request, error)
        self._queue.clear()
        self._update_idle()

    def _on_loop_exit(self, task: asyncio.Task[None]) -> None:
        if self._stopped:
            return
        self._died = True
        self._accepting = False
        error = None if task.cancelled() else task.exception()
        log.error("batcher %s: the batching loop ended unexpectedly: %r", self.name, error or "cancelled")
        self._fail_queued(ServeError(ErrorKind.UNAVAILABLE, f"model {self.name} is not running: {error!r}"))

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
