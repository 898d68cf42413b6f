"""The request path, protocol-free. Every front end does the same two things:

    with service.track("rest", request_id) as call:      # in-flight count, outcome, stats, log
        call.deadline = service.deadline_in(timeout_s)   # the client's deadline, capped
        result = await service.infer(call, TaskRequest(...))

`track` counts every outcome once, whatever protocol asked, and turns an unexpected exception into
an INTERNAL error that carries the request id (the detail goes to the log, not to the client).
`infer` resolves the model version (and holds it until the answer is built), checks the
parameters, tokenizes (on the event loop when short, else on a tokenizer thread), submits the
rows to the version's batcher, and decodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from server.core.body_budget import BodyBudget
from server.core.config import CoreConfig
from server.core.errors import OK_CODE, ErrorKind, ServeError, internal_error, invalid, too_large
from server.core.heap import release_free_heap
from server.core.manifest import Manifest
from server.core.model import ModelVersion
from server.core.observer import NullObserver, ServiceObserver
from server.core.rows import RowOutputs
from server.core.stats import ModelStats
from server.core.store import ModelStore
from server.core.tasks.base import Encoded, TaskHandler
from server.core.timings import Timings

log = logging.getLogger("electra.service")
request_log = logging.getLogger("electra.request")

# A task's decode: (encoded item, its row outputs, params, manifest) -> result.
DecodeFn = Callable[[Encoded, list[RowOutputs], Any, Manifest], Any]

# Seconds without a request in flight before the CPU server gives freed heap pages back.
IDLE_TRIM_S = 1.0
_ID_PREFIX = os.urandom(3).hex()
_ids = iter(range(1, 1 << 62))


def new_request_id() -> str:
    """Unique within the host and cheap: a per-process random prefix and a counter."""
    return f"{_ID_PREFIX}{os.getpid():x}-{next(_ids):x}"


@dataclass(slots=True)
class TaskRequest:
    """One request to a task. Typed front ends (typed gRPC, KServe v2) give `items` and the
    parameters they set (`given`); REST gives its JSON `inputs` and `parameters`, converted by the
    task once the model (and so the task) is known."""

    task: str | None
    model: str | None
    version: str | None = None
    items: list[Any] | None = None
    given: Mapping[str, Any] | None = None
    inputs: Any = None
    parameters: Any = None
    decode: DecodeFn | None = None  # replaces the task's decode (KServe v2 also returns LOGITS)
    # Serves the request instead of the model's own task, on a model of `task` (zero-shot
    # classification on an NLI classifier).
    handler: TaskHandler | None = None


@dataclass(slots=True)
class Result:
    values: list[Any]  # one list-shaped result per item
    model: str
    version: str
    task: TaskHandler
    timings: Timings
    is_list: bool = True  # REST: whether `inputs` was a list (else the answer is values[0])

    def pipeline_json(self) -> Any:
        """What the Hugging Face pipeline (and so REST) answers."""
        shaped = [self.task.pipeline_json(v) for v in self.values]
        return shaped if self.is_list else shaped[0]


@dataclass(slots=True)
class Call:
    """One request as the service accounts for it; front ends set `deadline`."""

    protocol: str
    request_id: str
    started: float = field(default_factory=time.perf_counter)
    deadline: float | None = None  # time.monotonic()
    model: str = "unknown"
    version: str = ""
    task: str = "unknown"
    items: int = 0
    rows: int = 0
    code: str = OK_CODE
    timings: Timings | None = None
    error: str = ""


class InferenceService:
    def __init__(self, config: CoreConfig, models: ModelStore, observer: ServiceObserver | None = None) -> None:
        self.config = config
        self.models = models  # loading, unloading, the repository index (the repository API's)
        self.catalogue = models.catalogue  # what front ends read: models, versions, readiness
        self.observer: ServiceObserver = observer or NullObserver()
        self.stats = ModelStats(self.catalogue.executions)
        self.bodies = BodyBudget(config.max_body_buffer_bytes)
        self.draining = False
        self._tokenize_pool = ThreadPoolExecutor(config.tokenizer_threads, thread_name_prefix="tokenize")
        self._tokenize_backlog = 0
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._trim_timer: asyncio.TimerHandle | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, names: list[str] | None = None) -> None:
        """Load, warm up and start the start-up models; readiness follows only after all of them.

        A drain that starts meanwhile (SIGTERM while starting) stops the loading at the next model."""
        await self.models.start(names, self._warm_tokenizers)

    @property
    def loaded(self) -> bool:
        """Start-up loading finished."""
        return self.models.started

    @property
    def load_error(self) -> str | None:
        return self.models.load_error

    def _warm_tokenizers(self) -> None:
        """Give every tokenizer thread its own copy of every model's tokenizer before the first request
        (parsing a 30k-entry tokenizer.json costs tens of milliseconds)."""
        threads = self.config.tokenizer_threads
        # The barrier holds each task on its thread until all have started: one task per thread.
        barrier = threading.Barrier(threads)
        pools = list({id(v.tokenizers): v.tokenizers for v in self.catalogue.versions()}.values())

        def warm() -> None:
            for pool in pools:
                pool.get()
            barrier.wait(timeout=60)

        for future in [self._tokenize_pool.submit(warm) for _ in range(threads)]:
            future.result()

    @property
    def ready(self) -> bool:
        return self.loaded and not self.draining and self.catalogue.all_ready

    @property
    def live(self) -> bool:
        """False once a model's batching loop died for good: only a restart helps then."""
        return all(v.batcher.alive for v in self.catalogue.versions())

    def not_ready_reason(self) -> str:
        """Why readiness is false, without paths or internals (those are in the log)."""
        if self.draining:
            return "draining"
        if self.load_error is not None:
            return "loading the models failed (see the server log)"
        if not self.loaded:
            return "loading"
        failing = self.catalogue.failing()
        if failing:
            return f"model(s) not ready: {', '.join(failing)}"
        return "no model is loaded"

    def model_ready(self, name: str, version: str | None = None) -> bool:
        return self.loaded and not self.draining and self.catalogue.model_ready(name, version)

    async def drain(self, timeout_s: float) -> None:
        """Refuse new work, answer every accepted request, then stop the batchers (one budget in all)."""
        self.draining = True
        deadline = time.monotonic() + timeout_s
        for version in self.catalogue.versions():
            self.observer.model_ready(version.name, False)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            log.warning("drain timeout: %d requests still running", self._inflight)
        await self.models.stop(max(0.1, deadline - time.monotonic()))
        self._tokenize_pool.shutdown(wait=False, cancel_futures=True)

    # -- the request wrapper ------------------------------------------------------------------

    @contextlib.contextmanager
    def track(self, protocol: str, request_id: str | None = None) -> Iterator[Call]:
        """Account for one request, whatever its outcome: in-flight gauge, `electra_requests_total`
        and its duration, Triton statistics, one log line. Unexpected exceptions leave as an
        INTERNAL ServeError naming the request id."""
        call = Call(protocol, request_id or new_request_id())
        self.observer.inflight(protocol, 1)
        self._inflight += 1
        self._idle.clear()
        try:
            yield call
        except ServeError as error:
            call.code, call.error = error.kind.code_label, error.message
            if error.kind is ErrorKind.INTERNAL:
                # The detail is logged (and counted); the client gets the request id to find it by.
                log.error("request %s failed: %s", call.request_id, error.message, exc_info=error.__cause__)
                raise internal_error(call.request_id) from error
            raise
        except asyncio.CancelledError:
            # grpc.aio cancels a handler both when its client cancels and when its deadline passes.
            expired = call.deadline is not None and time.monotonic() >= call.deadline
            call.code = (ErrorKind.DEADLINE_EXCEEDED if expired else ErrorKind.CANCELLED).code_label
            raise
        except Exception as exc:
            call.code, call.error = ErrorKind.INTERNAL.code_label, f"{type(exc).__name__}: {exc}"
            log.error("request %s failed unexpectedly", call.request_id, exc_info=exc)
            raise internal_error(call.request_id) from exc
        finally:
            self._finish(call)

    def _finish(self, call: Call) -> None:
        seconds = time.perf_counter() - call.started
        self.observer.inflight(call.protocol, -1)
        self._inflight -= 1
        if self._inflight == 0:
            # Whatever the outcome: a refused 8 MB request leaves freed heap behind too.
            self._idle.set()
            self._schedule_trim()
        self.observer.request(call.model, call.task, call.protocol, call.code, seconds)
        if call.version:
            if call.code == OK_CODE and call.timings is not None:
                self.stats.record_success(call.model, call.version, call.items, call.timings)
            else:
                self.stats.record_failure(call.model, call.version, seconds)
        if request_log.isEnabledFor(logging.INFO):
            request_log.info(
                "%s %s %s:%s %s %.1fms",
                call.request_id,
                call.protocol,
                call.model,
                call.version,
                call.code,
                seconds * 1000,
                extra={
                    "request": {
                        "request_id": call.request_id,
                        "protocol": call.protocol,
                        "model": call.model,
                        "version": call.version,
                        "task": call.task,
                        "code": call.code,
                        "items": call.items,
                        "rows": call.rows,
                        "duration_ms": round(seconds * 1000, 3),
                        **({"error": call.error} if call.error else {}),
                    }
                },
            )

    def deadline_in(self, timeout_s: float | None) -> float:
        """The monotonic deadline of a request that asks for `timeout_s` (None: the default), never
        later than --request-timeout-s from now."""
        limit = self.config.request_timeout_s
        return time.monotonic() + (limit if timeout_s is None else min(timeout_s, limit))

    # -- requests -------------------------------------------------------------------------------

    def _admit(self) -> None:
        if self.draining:
            raise ServeError(ErrorKind.UNAVAILABLE, "server is shutting down", retry_after_s=1.0)
        if not self.loaded:
            raise ServeError(ErrorKind.UNAVAILABLE, "models are still loading", retry_after_s=1.0)

    def check_size(self, n_items: int) -> None:
        limit = self.config.max_inputs_per_request
        if n_items > limit:
            raise too_large(f"{n_items} inputs in one request; at most {limit} are allowed")

    async def infer(self, call: Call, request: TaskRequest) -> Result:
        """Validate, tokenize, batch, run and decode one request. Raises ServeError."""
        self._admit()
        version = self.catalogue.resolve(request.task, request.model, request.version)
        task = request.handler or version.task
        call.model, call.version, call.task = version.name, version.version, task.task
        is_list = True
        if request.items is not None:
            items = request.items
            given = task.parameters.check(request.given or {})
        else:
            items, is_list = task.items_from_json(request.inputs)
            given = task.parameters.from_json(request.parameters)
        if not items:
            raise invalid("inputs must not be an empty list")
        call.items = len(items)
        self.check_size(len(items))
        params = task.resolve(given, version.manifest)
        if call.deadline is None:
            call.deadline = self.deadline_in(None)
        version.acquire()
        try:
            values, timings = await self._run(version, task, items, params, call, request.decode)
        finally:
            version.release()
        call.timings = timings
        return Result(values, version.name, version.version, task, timings, is_list)

    async def _run(
        self,
        version: ModelVersion,
        task: TaskHandler,
        items: list[Any],
        params: Any,
        call: Call,
        decode: DecodeFn | None,
    ) -> tuple[list[Any], Timings]:
        started = time.perf_counter()
        batcher = version.batcher
        # A full queue refuses before any tokenizing: the work would be thrown away.
        batcher.check_capacity()
        max_rows = min(self.config.max_windows_per_request, batcher.policy.request_rows_limit)
        if text_chars(items, self.config.inline_tokenize_chars) <= self.config.inline_tokenize_chars:
            encoded = _encode(version, task, items, params, max_rows)
        else:
            encoded = await self._off_loop(_encode, version, task, items, params, max_rows)
        tokenized = time.perf_counter()
        rows = [row for item in encoded for row in item.rows]
        call.rows = len(rows)
        submitted = await batcher.submit(rows, call.deadline)
        decode_item = decode or task.decode
        if len(rows) <= self.config.inline_decode_rows:
            values = _decode_all(decode_item, encoded, submitted.outputs, params, version.manifest)
        else:
            values = await self._off_loop(
                _decode_all, decode_item, encoded, submitted.outputs, params, version.manifest
            )
        timings = Timings(
            tokenization_s=tokenized - started,
            queue_s=submitted.queue_seconds,
            inference_s=submitted.inference_seconds,
            total_s=time.perf_counter() - started,
        )
        self.observer.stages(version.name, timings.tokenization_s, timings.queue_s)
        return values, timings

    async def _off_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run fn on a tokenizer thread; a backlog past its bound is refused (429), not queued for ever."""
        limit = self.config.tokenize_backlog
        if self._tokenize_backlog >= limit:
            raise ServeError(
                ErrorKind.OVERLOADED,
                f"the server is overloaded: {self._tokenize_backlog} requests wait for a tokenizer thread",
                retry_after_s=1.0,
            )
        self._tokenize_backlog += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._tokenize_pool, fn, *args)
        finally:
            self._tokenize_backlog -= 1

    def _schedule_trim(self) -> None:
        # Where no model runs (an API worker), only large bodies leave heap worth giving back.
        if not (self.models.heap_tuned or self.bodies.large_seen):
            return
        self.bodies.large_seen = False
        if self._trim_timer is not None:
            self._trim_timer.cancel()
        self._trim_timer = asyncio.get_running_loop().call_later(IDLE_TRIM_S, self._trim_if_idle)

    def _trim_if_idle(self) -> None:
        self._trim_timer = None
        if self._inflight == 0 and not self.draining:
            # malloc_trim walks the heaps (milliseconds): off the event loop.
            self._tokenize_pool.submit(release_free_heap)


def text_chars(items: list[Any], limit: int) -> int:
    """Characters of text in a request's items (texts, or tuples of texts: pairs and QA), counted
    until past `limit`."""
    total = 0
    for item in items:
        parts = item if isinstance(item, tuple) else (item,)
        total += sum(len(part) for part in parts if isinstance(part, str))
        if total > limit:
            break
    return total


def _encode(version: ModelVersion, task: TaskHandler, items: list[Any], params: Any, max_rows: int) -> list[Encoded]:
    return task.encode(version.tokenizers.get(), items, params, version.manifest, max_rows)


def _decode_all(
    decode: DecodeFn, encoded: list[Encoded], outputs: list[RowOutputs], params: Any, manifest: Manifest
) -> list[Any]:
    values = []
    offset = 0
    for item in encoded:
        n = len(item.rows)
        values.append(decode(item, outputs[offset : offset + n], params, manifest))
        offset += n
    return values
