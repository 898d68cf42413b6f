"""The dynamic batcher: one per model version, one asyncio task owning its queue.

Requests hand in rows (unpadded token sequences). The loop waits for the first row, then up to
`max_queue_delay_ms` (counted from the oldest queued row, as Triton does) for more, and cuts a
batch as the selection policy chooses it (`selection`) from a window the queue builds fairly
(`queue`); one request may queue at most its share of the queue. Expired and abandoned requests
leave the queue at once. The model runs on a dedicated executor thread (`execution`, with its
retries); while every thread is busy, the next batch is staged only once it is full (a partial
one keeps growing until a thread frees up).

Supervision: after `failure_threshold` failed runs in a row the batcher reports itself unhealthy
(readiness turns false) and probes the model with a one-row run every `probe_interval_s` until
one succeeds. A batching loop that dies is restarted (a few times in a minute at most; then the
batcher is dead, which liveness reports). Every request ends with a result or an error, never
waiting forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor

from server.core.batching import selection
from server.core.batching.admission import Admission
from server.core.batching.execution import BatchExecution, ModelInputs, Outcome, RunFn
from server.core.batching.interface import SubmitResult
from server.core.batching.queue import QueuedRequest, QueuedRow, RequestQueue
from server.core.batching.selection import BatchLimits, Selector
from server.core.batching.supervision import Supervision
from server.core.config import BatchPolicy
from server.core.errors import ErrorKind, ServeError
from server.core.observer import BatchObserver, NullBatchObserver
from server.core.rows import Row

log = logging.getLogger("electra.batcher")


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
        selector: Selector | None = None,
    ) -> None:
        """
        sequence_outputs: see `BatchExecution`.
        executor: None (the default) creates one owned by the batcher with one thread per
          in-flight batch; one passed in is not shut down by `stop`.
        selector: the selection policy; None: `selection.select_batch` (as the module holds it when
          the batcher is made: the fault-injection server wraps it).
        """
        self.name = name
        self.policy = policy
        self.limits = BatchLimits.from_policy(policy)
        self.selector = selector if selector is not None else selection.select_batch
        self.execution = BatchExecution(run, pad_token_id=pad_token_id, sequence_outputs=sequence_outputs, name=name)
        self.max_queue_delay_s = max(0.0, policy.max_queue_delay_ms) / 1000.0
        self._observer: BatchObserver = observer or NullBatchObserver()
        self._owns_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(
            max_workers=policy.max_inflight_batches, thread_name_prefix=f"batcher-{name}"
        )
        self.supervision = Supervision(
            name,
            failure_threshold=failure_threshold,
            probe_interval_s=probe_interval_s,
            on_failure=lambda kind: self._notify(self._observer.on_failure, kind),
        )

        self._queue = RequestQueue(self.limits.window_size, self._on_depth)
        self.admission = Admission(name, policy, self._queue, self._on_drop)
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
        self.executions = 0  # model runs that succeeded (Triton's execution_count)

    # -- public ------------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Rows waiting in the queue (not those running)."""
        return self._queue.depth

    @property
    def inflight_batches(self) -> int:
        return self._inflight

    @property
    def alive(self) -> bool:
        """False once the batching loop died for good: liveness must report it."""
        return not self.supervision.died

    @property
    def healthy(self) -> bool:
        """Alive and its model runs are not failing in a row: readiness must report it."""
        return self.supervision.healthy

    @property
    def consecutive_failures(self) -> int:
        return self.supervision.consecutive_failures

    @property
    def accepting(self) -> bool:
        return self._accepting and not self.supervision.died

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
        self.admission.check_capacity(self.accepting, self.supervision.died)

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

    def enqueue(self, rows: Sequence[Row], deadline: float | None = None) -> QueuedRequest:
        """`submit` without a coroutine (for the model owner, which answers many requests from
        callbacks): the request's `future` resolves to its SubmitResult; `abandon` it to give up.
        Refusals (overload, too large, deadline passed, shutting down) raise at once."""
        if self._task is None and not self._stopped:
            self.start()
        if not self.accepting:
            raise self.admission.not_accepting(self.supervision.died)
        now = time.monotonic()
        self.admission.check(rows, deadline, now)
        n = len(rows)

        assert self._loop is not None
        request = QueuedRequest(
            rows=rows,
            future=self._loop.create_future(),
            deadline=deadline,
            submitted=now,
            outputs=[None] * n,
            unfinished=n,
        )
        self._queue.add(request)
        self._idle.clear()
        self._wakeup.set()
        if deadline is not None:
            request.timer = self._loop.call_later(max(0.0, deadline - now), self._expire, request)
        return request

    def abandon(self, request: QueuedRequest) -> None:
        """Nobody waits for this request any more: its queued rows leave, its outputs are ignored."""
        if not request.closed:
            dropped = self._queue.close(request)
            if dropped:
                self._on_drop("cancelled")
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
                    self._queue.depth,
                    self._inflight,
                )
        self._stopped = True
        self.supervision.stop()
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

    async def _next_batch(self) -> list[QueuedRow]:
        """Wait until a batch is worth cutting, then take its rows off the queue."""
        while True:
            self._wakeup.clear()
            now = time.monotonic()
            window, expired = self._queue.window(now)
            for request in expired:
                self._expire(request)
            if not window:
                self._update_idle()
                await self._wakeup.wait()
                continue
            positions, full = self.selector([e.length for e in window], self.limits)
            chosen = [window[p] for p in positions]
            full = full or self._queue.depth > len(window)
            wait = window[0].request.submitted + self.max_queue_delay_s - now
            # A partial batch is only cut when a thread can run it now: until then it may still grow.
            thread_free = self._inflight < self.policy.max_inflight_batches
            if full or (thread_free and (not self._accepting or wait <= 0)):
                self._queue.take(chosen)
                return chosen
            if not thread_free:
                await self._wakeup.wait()  # a new row or a finished batch
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wakeup.wait()

    def _dispatch(self, entries: list[QueuedRow]) -> None:
        rows = [e.row for e in entries]
        inputs = self.execution.pad(rows)
        real_tokens = sum(e.length for e in entries)

        self._inflight += 1
        assert self._loop is not None
        try:
            future = self._loop.run_in_executor(self._executor, self._run_unless_abandoned, entries, rows, inputs)
        except BaseException:
            future = self._loop.create_future()
            future.set_exception(RuntimeError("the inference executor is shut down"))
        task = self._loop.create_task(self._complete(entries, future, real_tokens, inputs[0].size))
        self._inflight_tasks.add(task)
        task.add_done_callback(self._inflight_tasks.discard)

    def _run_unless_abandoned(self, entries: list[QueuedRow], rows: list[Row], inputs: ModelInputs) -> Outcome | None:
        """On the executor thread: each row's outputs (or its error); None when nobody waits any more."""
        # A staged batch whose requests were all cancelled or failed meanwhile is not worth running.
        # (Reading the flags from this thread is a benign race: at worst the batch runs for nothing.)
        if all(e.request.closed for e in entries):
            return None
        return self.execution.run(rows, inputs)

    async def _complete(
        self,
        entries: list[QueuedRow],
        future: asyncio.Future[Outcome | None],
        real_tokens: int,
        padded_tokens: int,
    ) -> None:
        outcome: Outcome | None = None
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

    # -- supervision -------------------------------------------------------------------------

    def _account(self, outcome: Outcome, rows: int, real_tokens: int, padded_tokens: int) -> None:
        for kind in outcome.failed_runs:
            self._notify(self._observer.on_failure, kind)
        if outcome.retried_rows:
            self._notify(self._observer.on_retry, outcome.retried_rows)
        if outcome.any_succeeded:
            self.executions += 1
            self._notify(self._observer.on_batch, rows, real_tokens, padded_tokens, outcome.seconds)
            self.admission.batch_ran(outcome.seconds)
        self.supervision.ran(outcome, self._probe)

    async def _probe(self) -> None:
        if self._stopped:
            return
        assert self._loop is not None
        await self._loop.run_in_executor(self._executor, self.execution.probe)

    def _on_loop_exit(self, task: asyncio.Task[None]) -> None:
        if self._stopped:
            return
        error = None if task.cancelled() else task.exception()
        if error is None:
            # Cancelled from outside without stop(): the event loop is going away; nothing to restart.
            self.supervision.died = True
            self._accepting = False
            self._fail_queued(ServeError(ErrorKind.UNAVAILABLE, f"model {self.name} is not running"))
            return
        if self.supervision.may_restart():
            log.error("batcher %s: the batching loop ended unexpectedly (%r); restarting it", self.name, error)
            self._notify(self._observer.on_restart)
            # What was queued may be what broke it: those requests get an error (clients retry),
            # the loop starts again on an empty queue. (The dead iteration gave its slot back.)
            self._fail_queued(ServeError(ErrorKind.UNAVAILABLE, f"model {self.name} restarted its batching loop", 1.0))
            self._start_loop()
            return
        self._accepting = False
        log.error("batcher %s: the batching loop keeps failing (%r): the model is dead", self.name, error)
        self._fail_queued(ServeError(ErrorKind.UNAVAILABLE, f"model {self.name} is not running"))

    # -- answering requests ------------------------------------------------------------------

    def _deliver(self, entries: list[QueuedRow], outcome: Outcome) -> None:
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
                self._queue.close(request)
                started = request.started if request.started is not None else now
                if request.future is not None and not request.future.done():
                    filled = [o for o in request.outputs if o is not None]
                    request.future.set_result(
                        SubmitResult(
                            outputs=filled, queue_seconds=started - request.submitted, inference_seconds=now - started
                        )
                    )

    def _fail(self, request: QueuedRequest, error: ServeError) -> None:
        if request.closed:
            return
        self._queue.close(request)
        if request.future is not None and not request.future.done():
            request.future.set_exception(error)

    def _expire(self, request: QueuedRequest) -> None:
        """Deadline reached: fail the request if some of its rows have not started yet."""
        if request.closed or not request.pending:
            return  # everything already runs: let it finish
        waited = time.monotonic() - request.submitted
        self._queue.close(request)
        self._on_drop("deadline")
        if request.future is not None and not request.future.done():
            request.future.set_exception(
                ServeError(
                    ErrorKind.DEADLINE_EXCEEDED,
                    f"the request's deadline passed after {waited:.3f}s waiting for model {self.name}",
                )
            )
        self._update_idle()

    def _fail_queued(self, error: ServeError) -> None:
        for request in self._queue:
            self._fail(request, error)
        self._update_idle()

    # -- bookkeeping -------------------------------------------------------------------------

    def _on_drop(self, reason: str) -> None:
        self._notify(self._observer.on_drop, reason)

    def _on_depth(self, depth: int) -> None:
        self._notify(self._observer.on_queue_depth, depth)

    def _update_idle(self) -> None:
        if self._queue.depth == 0 and self._inflight == 0:
            self._idle.set()

    def _notify(self, hook: Callable[..., None], *args: object) -> None:
        try:
            hook(*args)
        except Exception:  # metrics must never break serving
            log.exception("batcher %s: observer hook %s failed", self.name, getattr(hook, "__name__", hook))
