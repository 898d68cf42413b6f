"""Load generators: wrk (compiled, HTTP), perf_analyzer (compiled, KServe v2 HTTP and gRPC) and a
Python asyncio client (typed gRPC, and open-loop Poisson over HTTP and gRPC). Each one runs as a
child process of the bench, so its own CPU cost is measured (rusage of the child) and reported."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from loadtests.stats import LatencySummary


@dataclass
class LoadResult:
    protocol: str  # rest | grpc | v2-http | v2-grpc | naive
    mode: str  # closed | open
    client: str  # wrk | python | perf_analyzer
    concurrency: int | None  # closed loop: clients in flight
    offered_rate: float | None  # open loop: requests per second offered
    duration_s: float
    requests: int  # answered successfully
    errors: int
    latency: LatencySummary
    client_cpu_s: float
    inputs_per_request: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        """Successful requests per second."""
        return self.requests / self.duration_s if self.duration_s > 0 else math.nan

    @property
    def seqs_per_s(self) -> float:
        return self.throughput * self.inputs_per_request

    @property
    def client_cores(self) -> float:
        return self.client_cpu_s / self.duration_s if self.duration_s > 0 else math.nan

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["throughput"] = self.throughput
        d["seqs_per_s"] = self.seqs_per_s
        return d
