"""Every Prometheus metric and bucket, defined once (CONTRACT §5). One registry per server, so
several servers in one process (tests) do not collide."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics import MetricWrapperBase

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
        self.queue_depth = Gauge("electra_queue_depth", "Rows waiting for a model run", ["model"], registry=r)
        self.model_ready = Gauge(
            "electra_model_ready", "1 when the model is loaded and warmed up", ["model"], registry=r
        )
        self.dropped = Counter(
            "electra_dropped_total",
            "Work refused or dropped before it reached the model",
            ["model", "reason"],
            registry=r,
        )
        self.inflight = Gauge("electra_inflight_requests", "Requests being handled", ["protocol"], registry=r)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def labelled(self, metric: MetricWrapperBase, *values: str) -> Any:
        """metric.labels(*values), looked up once: prometheus_client validates and locks on every
        `labels` call (a few microseconds, several times a request on the event loop). The label
        sets are bounded: models, tasks, protocols and status codes."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def observer(self, model: str) -> BatcherMetrics:
        return BatcherMetrics(self, model)

    def observe_request(self, model: str, task: str, protocol: str, code: str | int, seconds: float) -> None:
        self.labelled(self.requests, model, task, protocol, str(code)).inc()
        self.labelled(self.request_duration, model, task, protocol).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class BatcherMetrics:
    """The batcher's observer for one model (server.core.batcher.BatchObserver)."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self._batch_size = metrics.batch_size.labels(model)
        self._batch_tokens = metrics.batch_tokens.labels(model)
        self._padding = metrics.padding_ratio.labels(model)
        self._inference = metrics.inference_duration.labels(model)
        self._depth = metrics.queue_depth.labels(model)
        self._dropped = metrics.dropped
        self._model = model

    def on_batch(self, model_rows: int, real_tokens: int, padded_tokens: int, seconds: float) -> None:
        self._batch_size.observe(model_rows)
        self._batch_tokens.observe(padded_tokens)
        self._padding.observe((padded_tokens - real_tokens) / padded_tokens if padded_tokens else 0.0)
        self._inference.observe(seconds)

    def on_drop(self, reason: str, n_rows: int) -> None:
        self._dropped.labels(self._model, reason).inc(n_rows)

    def on_queue_depth(self, n: int) -> None:
        self._depth.set(n)
