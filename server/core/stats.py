"""Per-model-version cumulative statistics in Triton's shape (ModelStatistics, /v2/models/{name}/stats).

perf_analyzer reads them before and after each measurement and stops when they fail. Fed by the
service's request wrapper, so every inference protocol counts (REST /v1 and the Hugging Face
route, the typed gRPC service, KServe v2 over HTTP and gRPC); `execution_count` is the batcher's
own count of model runs, whatever protocol asked for them. Stage times
map as: compute_input = tokenization, queue = waiting in the batcher, compute_infer = the model
runs, compute_output = decoding. `batch_stats` are keyed by the request's row count: the batcher
mixes rows of many requests, so a request has no model batch of its own.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from server.core.timings import Timings

NS = 1_000_000_000


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += max(0, round(seconds * NS))

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class BatchCounters:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class ModelCounters:
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, BatchCounters] = field(default_factory=dict)


def _add(duration: Duration, other: dict[str, int]) -> None:
    duration.count += other["count"]
    duration.ns += other["ns"]


def _stages(timings: Timings) -> tuple[float, float, float]:
    # Tokenization is Triton's compute_input; whatever is left after queue and model is decoding.
    output = timings.total_s - timings.tokenization_s - timings.queue_s - timings.inference_s
    return timings.tokenization_s, timings.inference_s, max(0.0, output)


class ModelStats:
    """Counters per (model, version); `executions(model, version)` reads the batcher's run count."""

    def __init__(self, executions: Callable[[str, str], int]) -> None:
        self._executions = executions
        self._models: dict[tuple[str, str], ModelCounters] = {}

    def _of(self, model: str, version: str) -> ModelCounters:
        return self._models.setdefault((model, version), ModelCounters())

    def record_success(self, model: str, version: str, batch_size: int, timings: Timings) -> None:
        counters = self._of(model, version)
        compute_input, compute_infer, compute_output = _stages(timings)
        counters.success.add(timings.total_s)
        counters.queue.add(timings.queue_s)
        counters.compute_input.add(compute_input)
        counters.compute_infer.add(compute_infer)
        counters.compute_output.add(compute_output)
        counters.inference_count += batch_size
        counters.last_inference_ms = int(time.time() * 1000)
        batch = counters.batches.setdefault(batch_size, BatchCounters())
        batch.compute_input.add(compute_input)
        batch.compute_infer.add(compute_infer)
        batch.compute_output.add(compute_output)

    def record_failure(self, model: str, version: str, seconds: float) -> None:
        self._of(model, version).fail.add(seconds)

    def snapshot(self) -> list[dict[str, Any]]:
        """Every counter, JSON-able (an API worker hands its own to be summed with the others')."""
        return [
            {"model": model, "version": version, "counters": dataclasses.asdict(counters)}
            for (model, version), counters in self._models.items()
        ]

    def merge(self, snapshot: list[dict[str, Any]]) -> None:
        """Add another process's counters to these."""
        for entry in snapshot:
            mine = self._of(entry["model"], entry["version"])
            theirs = entry["counters"]
            for name in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
                _add(getattr(mine, name), theirs[name])
            mine.inference_count += theirs["inference_count"]
            mine.last_inference_ms = max(mine.last_inference_ms, theirs["last_inference_ms"])
            for size, batch in theirs["batches"].items():
                counters = mine.batches.setdefault(int(size), BatchCounters())
                for name in ("compute_input", "compute_infer", "compute_output"):
                    _add(getattr(counters, name), batch[name])

    def forget(self, model: str) -> None:
        """An unloaded model's counters go with it."""
        for key in [k for k in self._models if k[0] == model]:
            del self._models[key]

    def model_stats(self, model: str, version: str) -> dict[str, Any]:
        """One model version's statistics as Triton's JSON (and, field for field, its protobuf message)."""
        c = self._models.get((model, version)) or ModelCounters()
        return {
            "name": model,
            "version": version,
            "last_inference": c.last_inference_ms,
            "inference_count": c.inference_count,
            "execution_count": self._executions(model, version),
            "inference_stats": {
                "success": c.success.as_dict(),
                "fail": c.fail.as_dict(),
                "queue": c.queue.as_dict(),
                "compute_input": c.compute_input.as_dict(),
                "compute_infer": c.compute_infer.as_dict(),
                "compute_output": c.compute_output.as_dict(),
                "cache_hit": Duration().as_dict(),
                "cache_miss": Duration().as_dict(),
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": b.compute_input.as_dict(),
                    "compute_infer": b.compute_infer.as_dict(),
                    "compute_output": b.compute_output.as_dict(),
                }
                for size, b in sorted(c.batches.items())
            ],
            "memory_usage": [],
        }
