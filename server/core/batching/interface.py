"""What the service needs of a batcher, whether it runs here (`DynamicBatcher`) or in the model
owner's process (the workers' `RemoteBatcher`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from server.core.config import BatchPolicy
from server.core.rows import Row, RowOutputs


@dataclass(slots=True)
class SubmitResult:
    outputs: list[RowOutputs]  # same order as the submitted rows, padding removed
    queue_seconds: float  # submit -> first of its rows started running
    inference_seconds: float  # first of its rows started -> last one finished


class Batcher(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def policy(self) -> BatchPolicy: ...

    @property
    def healthy(self) -> bool:
        """Alive and its model runs are not failing in a row: readiness reports it."""
        ...

    @property
    def alive(self) -> bool:
        """False once it cannot run anything any more: liveness reports it."""
        ...

    @property
    def executions(self) -> int:
        """Model runs that succeeded (Triton's execution_count)."""
        ...

    @property
    def queue_depth(self) -> int:
        """Rows waiting for a model run."""
        ...

    def check_capacity(self) -> None:
        """Raise the overload error now when the queue is known full (before any tokenizing)."""

    async def submit(self, rows: Sequence[Row], deadline: float | None = None) -> SubmitResult:
        """The rows' outputs, run with other requests' rows; `deadline` is a time.monotonic()
        instant after which rows that have not started are dropped."""
        ...

    def start(self) -> None: ...

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Refuse new work, finish what was accepted (bounded)."""
