"""The one entry point both APIs call: `service.run(task, model, inputs, parameters, ...)`.

Protocol-free: it knows models, tasks, the batcher and the runtime, never HTTP or gRPC.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from server.core.batcher import DynamicBatcher
from server.core.errors import ErrorKind, ServeError
from server.core.manifest import Manifest, list_models
from server.core.rows import RowOutputs
from server.core.runtime import (
    OnnxModelRuntime,
    RuntimeOptions,
    limit_heap_retention,
    release_free_heap,
    select_device,
    select_precision,
    warmup_buckets,
)
from server.core.tasks import TASKS, TaskHandler
from server.core.tasks.base import Encoded
from server.core.tokenizer import TokenizerPool
from server.metrics import Metrics
from server.settings import Settings

log = logging.getLogger("electra.service")

# A task's decode: (encoded item, its row outputs, params, manifest) -> result.
DecodeFn = Callable[[Encoded, list[RowOutputs], Any, Manifest], Any]


# The batch-growth limit per device (see DynamicBatcher). CPU: a padded token costs a real
# one and batching gains little, so batches stay close in length. CUDA: batch size pays.
MAX_PADDING_RATIO: dict[str, float | None] = {"cpu": 0.1, "cuda": None}

# CPU defaults for the batch limits a user did not set (the Settings defaults suit a GPU).
# Measured on the demo classifier (2 cores, length-sorted batches): CPU time per row is lowest
# at 3-6 rows (9.2 ms vs 11.3 at 1 row) and rises past 8 (12.1 ms at 16): bigger batches fall
# out of the caches. A 2,048-token budget also bounds the activations of long rows. Long rows
# batch badly on a CPU: one thread, demo models, CPU time per row of 384 tokens is 84 ms alone
# and 115 ms in batches of 2 or 4, of 256 tokens 53 ms alone or in 2s and 73 ms in 4s, while rows
# of 128 tokens get cheaper up to 8 (35 -> 25 ms): what grows is rows x length^2, each head's
# attention scores, hence a limit on that (160,000: one 384-token window, 2 x 256, 8 x 128).
CPU_BATCH_DEFAULTS = {"max_batch_size": 8, "max_batch_tokens": 2048, "max_batch_attention": 160_000}


class BatchLimits(NamedTuple):
    max_batch_size: int
    max_batch_tokens: int
    max_batch_attention: int | None  # None: no limit


def batch_limits(settings: Settings, device: str) -> BatchLimits:
    """The batcher's limits: what the user set, else the device's default."""
    limits = {name: getattr(settings, name) for name in BatchLimits._fields}
    if device == "cpu":
        limits.update({k: v for k, v in CPU_BATCH_DEFAULTS.items() if k not in settings.model_fields_set})
    return BatchLimits(limits["max_batch_size"], limits["max_batch_tokens"], limits["max_batch_attention"] or None)


def _text_chars(items: list[Any], limit: int) -> int:
    """Characters of text in a request's parsed items (texts, or tuples of texts: pairs and QA),
    counted until past `limit`."""
    total = 0
    for item in items:
        parts = item if isinstance(item, tuple) else (item,)
        total += sum(len(part) for part in parts if isinstance(part, str))
        if total > limit:
            break
    return total


# Seconds without a request in flight before the CPU server gives freed heap pages back.
IDLE_TRIM_S = 1.0


def padding_limit(settings: Settings, device: str) -> float | None:
    """The batcher's max_padding_ratio: what the user set (1 = none), else the device's default."""
    if settings.max_padding_ratio is None:
        return MAX_PADDING_RATIO[device]
    return None if settings.max_padding_ratio >= 1 else settings.max_padding_ratio


def runtime_options(settings: Settings, device: str) -> RuntimeOptions:
    """How the server creates each model's runtime (the offline benchmark uses the same).

    CPU: one session per model, shared by the in-flight batches (each run single-threaded on its
    own executor thread): the weights are held once. No memory arena: the arena keeps its peak
    (a batch of long rows) for good, per model, while freed buffers go back to the system.
    """
    inflight = settings.inflight_batches(device)
    return RuntimeOptions(
        intra_op_threads=settings.intra_op_threads,
        cpu_sessions=1,
        runs_per_session=inflight if device == "cpu" else 1,
        enable_cpu_mem_arena=device != "cpu",
        tensorrt=settings.tensorrt,
        max_batch_size=settings.max_batch_size,
    )


@dataclass(slots=True)
class Timings:
    tokenization_s: float = 0.0
    queue_s: float = 0.0
    inference_s: float = 0.0
    total_s: float = 0.0


@dataclass(slots=True)
class Result:
    value: Any
    model: str
    task: str
    timings: Timings = field(default_factory=Timings)
    items: int = 1  # inputs in the request (a list of n, or one)


@dataclass
class LoadedModel:
    manifest: Manifest
    path: Path
    task: TaskHandler
    tokenizers: TokenizerPool
    runtime: OnnxModelRuntime
    batcher: DynamicBatcher

    @property
    def name(self) -> str:
        return self.manifest.name

    def describe(self) -> dict[str, Any]:
        variant = self.manifest.variants[self.runtime.precision]
        return {
            "name": self.name,
            "task": self.manifest.task,
            "labels": self.manifest.labels,
            "precision": self.runtime.precision,
            "device": self.runtime.device,
            "providers": self.runtime.providers,
            "max_seq_len": self.manifest.max_seq_len,
            "problem_type": self.manifest.problem_type,
            "parity": variant.parity.model_dump(),
            "source": self.manifest.source.model_dump(),
            "evaluation": self.manifest.evaluation.model_dump() if self.manifest.evaluation else None,
            "ready": self.batcher.healthy,
        }


class InferenceService:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.models: dict[str, LoadedModel] = {}
        self.loaded = False
        self.draining = False
        self.load_error: str | None = None
        self._tokenize_pool = ThreadPoolExecutor(settings.tokenizer_threads, thread_name_prefix="tokenize")
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # CPU: once no request has been in flight for IDLE_TRIM_S, freed heap pages go back to the system.
        self._trim_heap = False
        self._trim_timer: asyncio.TimerHandle | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def load(self, repository: Path) -> None:
        """Load, warm up and start every model; readiness follows only after all of them.

        A drain that starts meanwhile (SIGTERM while starting) stops the loading at the next model:
        the loading thread cannot be interrupted, and the process could not exit before it ends.
        """
        try:
            await asyncio.to_thread(self._load_all, Path(repository))
            if self.draining:
                log.info("loading stopped: the server is shutting down")
                return
            await asyncio.to_thread(self._warm_tokenizers)
            for model in self.models.values():
                model.batcher.start()
                self.metrics.model_ready.labels(model.name).set(1)
            self.loaded = True
        except Exception as exc:
            self.load_error = str(exc)
            log.error("loading models failed: %s", exc)
            raise

    def _load_all(self, repository: Path) -> None:
        available = {p.name: p for p in list_models(repository)}
        wanted = self.settings.model_names() or sorted(available)
        missing = [name for name in wanted if name not in available]
        if missing:
            raise ServeError(ErrorKind.NOT_FOUND, f"models not in {repository}: {', '.join(missing)}")
        if not wanted:
            raise ServeError(ErrorKind.NOT_FOUND, f"no models in {repository}")
        device = select_device(self.settings.device)
        inflight = self.settings.inflight_batches(device)
        options = runtime_options(self.settings, device)
        if not options.enable_cpu_mem_arena:
            self._trim_heap = limit_heap_retention()
        max_batch_size, max_batch_tokens, max_batch_attention = batch_limits(self.settings, device)
        tokenizer_pools: dict[str, TokenizerPool] = {}
        for name in wanted:
            if self.draining:
                return
            path = available[name]
            manifest = Manifest.read(path)
            precision = select_precision(self.settings.precision, device, manifest)
            runtime = OnnxModelRuntime(path, manifest, device, precision, options)
            runtime.warmup(warmup_buckets(device, max_batch_size, manifest.max_seq_len, max_batch_tokens))
            # Models exported from one base share its tokenizer: one pool (and one copy per
            # tokenizing thread) serves them all.
            tokenizer_json = (path / manifest.tokenizer).read_text(encoding="utf-8")
            tokenizers = tokenizer_pools.setdefault(tokenizer_json, TokenizerPool(tokenizer_json))
            batcher = DynamicBatcher(
                runtime.run,
                pad_token_id=tokenizers.pad_token_id,
                max_batch_size=max_batch_size,
                max_batch_tokens=max_batch_tokens,
                max_batch_attention=max_batch_attention,
                max_queue_delay_ms=self.settings.max_queue_delay_ms,
                max_queue_size=self.settings.max_queue_size,
                max_inflight_batches=inflight,
                max_padding_ratio=padding_limit(self.settings, device),
                sequence_outputs=runtime.sequence_outputs,
                observer=self.metrics.observer(name),
                name=name,
            )
            self.models[name] = LoadedModel(manifest, path, TASKS[manifest.task], tokenizers, runtime, batcher)
            log.info("model %s ready: %s, %s on %s", name, manifest.task, precision, device)

    def _warm_tokenizers(self) -> None:
        """Give every tokenizer thread its own copy of every model's tokenizer before the first request
        (parsing a 30k-entry tokenizer.json costs tens of milliseconds)."""
        threads = self.settings.tokenizer_threads
        # The barrier holds each task on its thread until all have started: one task per thread.
        barrier = threading.Barrier(threads)

        def warm() -> None:
            for model in self.models.values():
                model.tokenizers.get()
            barrier.wait(timeout=60)

        for future in [self._tokenize_pool.submit(warm) for _ in range(threads)]:
            future.result()

    @property
    def ready(self) -> bool:
        return self.loaded and not self.draining and all(m.batcher.healthy for m in self.models.values())

    def model_ready(self, name: str) -> bool:
        model = self.models.get(name)
        return bool(model and self.loaded and not self.draining and model.batcher.healthy)

    async def drain(self, timeout_s: float) -> None:
        """Refuse new work, answer every accepted request, then stop the batchers."""
        self.draining = True
        # One budget for the whole drain: the pod's grace period is sized on it.
        deadline = time.monotonic() + timeout_s
        for model in self.models.values():
            self.metrics.model_ready.labels(model.name).set(0)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            log.warning("drain timeout: %d requests still running", self._inflight)
        for model in self.models.values():
            await model.batcher.stop(drain_timeout_s=max(0.1, deadline - time.monotonic()))
        self._tokenize_pool.shutdown(wait=False, cancel_futures=True)

    # -- requests -------------------------------------------------------------------------------

    def resolve(self, task: str | None, model: str | None) -> LoadedModel:
        """The model a request names, or the only loaded model of its task."""
        if model is not None:
            if not isinstance(model, str):
                raise ServeError(ErrorKind.BAD_REQUEST, "model must be a string")
            found = self.models.get(model)
            if found is None:
                raise ServeError(ErrorKind.NOT_FOUND, f"model '{model}' is not loaded")
            if task is not None and found.manifest.task != task:
                raise ServeError(ErrorKind.BAD_REQUEST, f"model '{model}' serves {found.manifest.task}, not {task}")
            return found
        candidates = [m for m in self.models.values() if m.manifest.task == task]
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            raise ServeError(ErrorKind.NOT_FOUND, f"no loaded model serves {task}")
        names = ", ".join(sorted(m.name for m in candidates))
        raise ServeError(ErrorKind.BAD_REQUEST, f"several models serve {task} ({names}): name one with 'model'")

    def _admit(self) -> None:
        if self.draining:
            raise ServeError(ErrorKind.UNAVAILABLE, "server is shutting down", retry_after_s=1.0)
        if not self.loaded:
            raise ServeError(ErrorKind.UNAVAILABLE, "models are still loading", retry_after_s=1.0)

    async def run(
        self,
        task: str | None,
        model: str | None,
        inputs: Any,
        parameters: dict[str, Any] | None = None,
        deadline: float | None = None,
    ) -> Result:
        """Validate, tokenize, batch, run and decode one request. Raises ServeError."""
        self._admit()
        loaded = self.resolve(task, model)
        try:
            items, params, is_list = loaded.task.parse(inputs, parameters, loaded.manifest)
            values, timings = await self._infer(loaded, items, params, deadline)
        except ServeError as error:
            error.model = loaded.name
            raise
        return Result(values if is_list else values[0], loaded.name, loaded.manifest.task, timings, len(values))

    async def run_items(
        self, model: str, items: list[Any], deadline: float | None = None, decode: DecodeFn | None = None
    ) -> tuple[LoadedModel, list[Any], Timings]:
        """Already-parsed items with the task's default parameters (KServe v2 tensors carry none).

        decode: replaces the task's decode for each item (same arguments); the KServe v2 front end
        uses it to return raw logits beside the decoded result.
        """
        self._admit()
        loaded = self.resolve(None, model)
        params = loaded.task.default_params(loaded.manifest)
        values, timings = await self._infer(loaded, items, params, deadline, decode)
        return loaded, values, timings

    def check_size(self, n_items: int) -> None:
        if n_items > self.settings.max_inputs_per_request:
            raise ServeError(
                ErrorKind.TOO_LARGE,
                f"{n_items} inputs in one request; at most {self.settings.max_inputs_per_request} are allowed",
            )

    async def _infer(
        self, loaded: LoadedModel, items: list[Any], params: Any, deadline: float | None, decode: DecodeFn | None = None
    ) -> tuple[list[Any], Timings]:
        self.check_size(len(items))
        started = time.perf_counter()
        if deadline is None:
            deadline = time.monotonic() + self.settings.request_timeout_s
        self._inflight += 1
        self._idle.clear()
        try:
            if _text_chars(items, self.settings.inline_tokenize_chars) <= self.settings.inline_tokenize_chars:
                encoded = self._encode(loaded, items, params)
            else:
                loop = asyncio.get_running_loop()
                encoded = await loop.run_in_executor(self._tokenize_pool, self._encode, loaded, items, params)
            tokenized = time.perf_counter()
            rows = [row for item in encoded for row in item.rows]
            if len(rows) > self.settings.max_queue_size:
                raise ServeError(
                    ErrorKind.TOO_LARGE,
                    f"this request needs {len(rows)} model rows; "
                    f"the queue holds at most {self.settings.max_queue_size}",
                )
            submitted = await loaded.batcher.submit(rows, deadline)
            decode_item = decode or loaded.task.decode
            outputs = submitted.outputs
            values = []
            offset = 0
            for item in encoded:
                n = len(item.rows)
                values.append(decode_item(item, outputs[offset : offset + n], params, loaded.manifest))
                offset += n
            finished = time.perf_counter()
            timings = Timings(
                tokenization_s=tokenized - started,
                queue_s=submitted.queue_seconds,
                inference_s=submitted.inference_seconds,
                total_s=finished - started,
            )
            self.metrics.labelled(self.metrics.tokenization_duration, loaded.name).observe(timings.tokenization_s)
            self.metrics.labelled(self.metrics.queue_duration, loaded.name).observe(timings.queue_s)
            return values, timings
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()
                self._schedule_trim()

    def _schedule_trim(self) -> None:
        if not self._trim_heap:
            return
        if self._trim_timer is not None:
            self._trim_timer.cancel()
        self._trim_timer = asyncio.get_running_loop().call_later(IDLE_TRIM_S, self._trim_if_idle)

    def _trim_if_idle(self) -> None:
        self._trim_timer = None
        if self._inflight == 0 and not self.draining:
            # malloc_trim walks the heaps (milliseconds): off the event loop.
            self._tokenize_pool.submit(release_free_heap)

    @staticmethod
    def _encode(loaded: LoadedModel, items: list[Any], params: Any) -> list[Any]:
        return loaded.task.encode(loaded.tokenizers.get(), items, params, loaded.manifest)
