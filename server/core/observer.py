"""What the core reports as it works, as a protocol: `server.metrics.Metrics` implements it with
Prometheus; tests and tools may pass `NullObserver`. Every hook is called on the event loop, must
be cheap and must not raise."""

from __future__ import annotations

from typing import Protocol

from server.core.batcher import BatchObserver
from server.core.batcher import NullObserver as NullBatchObserver


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
