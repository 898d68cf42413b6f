"""What a bench run carries from phase to phase: its plan (durations, client counts, sizes), the
inputs and servers it set up, and its notes. Below the bench (loadtests/bench.py) and its phases
(loadtests/peers/phase.py), which both take a Context: neither imports the other for it."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtests.servers import ServerProcess


@dataclass
class Plan:
    quick: bool
    duration_s: float  # per closed-loop point
    open_duration_s: float
    rounds: int
    round_s: float  # REST @32 in each side-by-side round
    qa_duration_s: float
    concurrencies: list[int]
    open_fractions: list[float]
    n_texts: int
    offline_rows: int
    sweep_batches: list[int]
    n_qa: int
    qa_concurrency: int
    naive_concurrencies: list[int]
    versus_rounds: int
    warmup_s: float
    pa_requests: int  # perf_analyzer: requests per measurement window (at least 2 x concurrency)
    # gRPC (unary and Stream) and KServe v2 (REST gets `concurrencies`); at 32 clients the closed
    # loop reuses the side-by-side rounds' runs, so a quick run adds no closed-loop gRPC time.
    other_concurrencies: list[int]


@dataclass
class Context:
    args: argparse.Namespace
    plan: Plan
    out: Path
    scratch: Path
    logs: Path
    repository: Path
    model: str
    qa_model: str | None
    checkpoint: Path | None
    bodies: Path
    bodies_list: list[dict[str, Any]]
    qa_bodies: Path | None
    pa_data: Path | None
    server: ServerProcess | None = None
    server_cores: list[int] | None = None
    client_prefix: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    protocols: dict[str, bool] = field(default_factory=dict)
    ab_server: ServerProcess | None = None
    argv: list[str] | None = None  # as given to main (None: sys.argv)
    started: float = 0.0  # time.monotonic() at the start of the run
    dataset: str = ""  # the inputs, described for the report
    cores: int = 1
    client_cores: list[int] | None = None
    phases: set[str] = field(default_factory=set)

    @property
    def server_core_count(self) -> int:
        return len(self.server_cores) if self.server_cores else self.cores

    def log(self, message: str) -> None:
        log(message)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)
