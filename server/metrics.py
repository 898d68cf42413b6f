"""Every Prometheus metric and bucket, defined once (docs/REFERENCE.md §6). One registry per server, so
several servers in one process (tests) do not collide. `Metrics` is the core's observer
(server.core.observer.ServiceObserver).

`code` is the outcome's HTTP status on every protocol (200, 400, 429, 504, ...); `protocol` says
which front end answered (rest | grpc | v2). `electra_dropped_total` counts requests, like
`electra_requests_total`, so that the one can be divided by the other."""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.multiprocess import MultiProcessCollector

# Set (by the multi-process front end, before prometheus_client is first imported) when several
# processes report together.
MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR")

# `*_created` series double the exposition for no use on a scrape-based dashboard.
disable_created_metrics()

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256)
BATCH_TOKEN_BUCKETS = (16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
RATIO_BUCKETS = (0.0, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "electra_requests_total", "Requests answered, by outcome", ["model", "task", "protocol", "code"], registry=r
        )
        self.request_duration = Histogram(
            "electra_request_duration_seconds",
            "End-to-end request latency inside the server",
            ["model", "task", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokenization_duration = Histogram(
            "electra_tokenization_duration_seconds",
            "Time to tokenize a request",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_duration = Histogram(
            "electra_queue_duration_seconds",
            "Time a request's rows waited for a model run",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            "electra_inference_duration_seconds",
            "Duration of each model run",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "electra_batch_size", "Rows in each model run", ["model"], buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "electra_batch_tokens",
            "Padded tokens (rows x longest row) in each model run",
            ["model"],
            buckets=BATCH_TOKEN_BUCKETS,
            registry=r,
        )
        self.padding_ratio = Histogram(
            "electra_padding_ratio",
            "Padding tokens / all tokens in each model run",
            ["model"],
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        # multiprocess_mode: how the API workers' and the model owner's values combine (--workers > 1).
        self.queue_depth = Gauge(
            "electra_queue_depth", "Rows waiting for a model run", ["model"], registry=r, multiprocess_mode="livesum"
        )
        self.ready_models = Gauge(
            "electra_model_ready", "1 when the model is loaded and warmed up", ["model"], registry=r,
            multiprocess_mode="livemax",
        )  # fmt: skip
        self.dropped = Counter(
            "electra_dropped_total",
            "Requests refused or dropped before their work reached the model",
            ["model", "reason"],
            registry=r,
        )
        self.inflight_requests = Gauge(
            "electra_inflight_requests", "Requests being handled", ["protocol"], registry=r, multiprocess_mode="livesum"
        )
        self.batch_failures = Counter(
            "electra_batch_failures_total",
            "Model runs that failed (kind: error | oom); their rows were retried in smaller parts",
            ["model", "kind"],
            registry=r,
        )
        self.batch_retries = Counter(
            "electra_batch_retried_rows_total",
            "Rows of failed model runs that were run again in smaller parts",
            ["model"],
            registry=r,
        )
        self.batcher_restarts = Counter(
            "electra_batcher_restarts_total", "Batching loops that died and were restarted", ["model"], registry=r
        )
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._metrics = {id(m): m for m in vars(self).values() if isinstance(m, MetricWrapperBase)}

    def labelled(self, metric: MetricWrapperBase, *values: str) -> Any:
        """metric.labels(*values), looked up once: prometheus_client validates and locks on every
        `labels` call (a few microseconds, several times a request on the event loop). The label
        sets are bounded: models, tasks, protocols and status codes."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    # -- the core's observer (server.core.observer.ServiceObserver) ----------------------------

    def batcher(self, model: str) -> BatcherMetrics:
        return BatcherMetrics(self, model)

    def request(self, model: str, task: str, protocol: str, code: str, seconds: float) -> None:
        self.labelled(self.requests, model, task, protocol, code).inc()
        self.labelled(self.request_duration, model, task, protocol).observe(seconds)

    def stages(self, model: str, tokenization_s: float, queue_s: float) -> None:
        self.labelled(self.tokenization_duration, model).observe(tokenization_s)
        self.labelled(self.queue_duration, model).observe(queue_s)

    def inflight(self, protocol: str, delta: int) -> None:
        self.labelled(self.inflight_requests, protocol).inc(delta)

    def model_ready(self, model: str, ready: bool) -> None:
        self.labelled(self.ready_models, model).set(1 if ready else 0)

    def model_removed(self, model: str) -> None:
        """An unloaded model's series go with it (they would otherwise stay at their last value)."""
        for key in list(self._children):
            metric = self._metrics[key[0]]
            names = metric._labelnames  # prometheus_client has no public accessor for them
            if "model" in names and key[1][names.index("model")] == model:
                metric.remove(*key[1])
                del self._children[key]

    def exposition(self) -> bytes:
        if MULTIPROCESS_DIR:
            # --workers > 1: every process writes its values to files there; any one of them sums them all.
            combined = CollectorRegistry()
            MultiProcessCollector(combined)
            return generate_latest(combined)
        return generate_latest(self.registry)


class BatcherMetrics:
    """The batcher's observer for one model (server.core.observer.BatchObserver)."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        m = metrics
        self._batch_size = m.labelled(m.batch_size, model)
        self._batch_tokens = m.labelled(m.batch_tokens, model)
        self._padding = m.labelled(m.padding_ratio, model)
        self._inference = m.labelled(m.inference_duration, model)
        self._depth = m.labelled(m.queue_depth, model)
        self._retries = m.labelled(m.batch_retries, model)
        self._restarts = m.labelled(m.batcher_restarts, model)
        self._metrics = metrics
        self._model = model

    def on_batch(self, model_rows: int, real_tokens: int, padded_tokens: int, seconds: float) -> None:
        self._batch_size.observe(model_rows)
        self._batch_tokens.observe(padded_tokens)
        self._padding.observe((padded_tokens - real_tokens) / padded_tokens if padded_tokens else 0.0)
        self._inference.observe(seconds)

    def on_drop(self, reason: str) -> None:
        self._metrics.labelled(self._metrics.dropped, self._model, reason).inc()

    def on_queue_depth(self, n: int) -> None:
        self._depth.set(n)

    def on_failure(self, kind: str) -> None:
        self._metrics.labelled(self._metrics.batch_failures, self._model, kind).inc()

    def on_retry(self, rows: int) -> None:
        self._retries.inc(rows)

    def on_restart(self) -> None:
        self._restarts.inc()
