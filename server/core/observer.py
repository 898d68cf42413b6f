"""What the core reports as it works, as a protocol: `server.metrics.Metrics` implements it with
Prometheus; tests and tools may pass `NullObserver`. Every hook is called on the event loop, must
be cheap and must not raise."""

from __future__ import annotations

from typing import Protocol


class BatchObserver(Protocol):
    """One model's batcher, as it works."""

    def on_batch(self, model_rows: int, real_tokens: int, padded_tokens: int, seconds: float) -> None: ...

    def on_drop(self, reason: str) -> None: ...  # one request: deadline | cancelled | overload

    def on_queue_depth(self, n: int) -> None: ...

    def on_failure(self, kind: str) -> None: ...  # a model run failed: error | oom

    def on_retry(self, rows: int) -> None: ...  # a failed batch's rows are run again in smaller parts

    def on_restart(self) -> None: ...  # the batching loop died and was restarted


class NullBatchObserver:
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


class ServiceObserver(Protocol):
    def batcher(self, model: str) -> BatchObserver: ...

    def request(self, model: str, task: str, protocol: str, code: str, seconds: float) -> None: ...

    def stages(self, model: str, tokenization_s: float, queue_s: float) -> None: ...

    def inflight(self, protocol: str, delta: int) -> None: ...

    def model_ready(self, model: str, ready: bool) -> None: ...

    def model_removed(self, model: str) -> None: ...


class NullObserver:
    def batcher(self, model: str) -> BatchObserver:
        return NullBatchObserver()

    def request(self, model: str, task: str, protocol: str, code: str, seconds: float) -> None:
        pass

    def stages(self, model: str, tokenization_s: float, queue_s: float) -> None:
        pass

    def inflight(self, protocol: str, delta: int) -> None:
        pass

    def model_ready(self, model: str, ready: bool) -> None:
        pass

    def model_removed(self, model: str) -> None:
        pass
