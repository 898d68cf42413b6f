"""Running one batch on the model, on an executor thread: padding, the run, each row's outputs.

Failures stay as small as they can: a batch whose run fails is run again in smaller parts, in
halves after an out-of-memory error (the batch may simply be too big), else one row at a time (to
find the rows that fail), so only the rows that fail on their own get an error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import numpy as np

from server.core.rows import Row, RowOutputs

log = logging.getLogger("electra.batcher")

RunFn = Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, np.ndarray]]
ModelInputs = tuple[np.ndarray, np.ndarray, np.ndarray]  # input_ids, attention_mask, token_type_ids


def is_out_of_memory(exc: BaseException) -> bool:
    """onnxruntime reports allocation failures as plain runtime errors; read the message."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return any(
        s in text for s in ("out of memory", "failed to allocate", "alloc_failed", "bad_alloc", "memoryallocation")
    )


@dataclass(slots=True)
class Outcome:
    """What the executor thread brings back: each row's outputs or error, and how the runs went."""

    outputs: list[RowOutputs | None]
    errors: list[BaseException | None]
    started: float  # time.monotonic() when the run began
    seconds: float
    failed_runs: list[str] = field(default_factory=list)  # kinds of the runs that failed: error | oom
    retried_rows: int = 0

    @property
    def any_succeeded(self) -> bool:
        return any(e is None for e in self.errors)


def pad_rows(rows: Sequence[Row], pad_token_id: int) -> ModelInputs:
    """The model's inputs for these rows, padded to the longest."""
    count, width = len(rows), max(len(r) for r in rows)
    input_ids = np.full((count, width), pad_token_id, dtype=np.int64)
    attention_mask = np.zeros((count, width), dtype=np.int64)
    token_type_ids = np.zeros((count, width), dtype=np.int64)
    for j, row in enumerate(rows):
        n = len(row)
        input_ids[j, :n] = row.input_ids
        attention_mask[j, :n] = 1
        token_type_ids[j, :n] = row.token_type_ids
    return input_ids, attention_mask, token_type_ids


class BatchExecution:
    """How one model version's batches run (thread-safe: it keeps no state between runs)."""

    def __init__(self, run: RunFn, *, pad_token_id: int, sequence_outputs: Collection[str] | None, name: str) -> None:
        """sequence_outputs: outputs with a sequence axis 1, cut back to each row's length (the
        runtime's `sequence_outputs`). None: guessed as "axis 1 equals the padded length", which is
        ambiguous for a classifier whose label count equals a batch's padded length."""
        self.run_model = run
        self.pad_token_id = pad_token_id
        self.sequence_outputs = None if sequence_outputs is None else frozenset(sequence_outputs)
        self.name = name

    def pad(self, rows: Sequence[Row]) -> ModelInputs:
        return pad_rows(rows, self.pad_token_id)

    def run(self, rows: Sequence[Row], inputs: ModelInputs | None = None) -> Outcome:
        """Every row's outputs or error (`inputs`: these rows already padded)."""
        started = time.monotonic()
        t0 = time.perf_counter()
        outcome = Outcome([None] * len(rows), [None] * len(rows), started, 0.0)
        self._run_part(rows, list(range(len(rows))), inputs, outcome)
        outcome.seconds = time.perf_counter() - t0
        return outcome

    def probe(self) -> None:
        """A one-row run of padding tokens (raises what the model raises)."""
        probe = np.full((1, 8), self.pad_token_id, dtype=np.int64)
        self.run_model(probe, np.ones_like(probe), np.zeros_like(probe))

    def _run_part(
        self, rows: Sequence[Row], positions: list[int], inputs: ModelInputs | None, outcome: Outcome
    ) -> None:
        part = [rows[p] for p in positions]
        if inputs is None:
            inputs = self.pad(part)
        try:
            outputs = self.run_model(*inputs)
            for position, row_outputs in zip(positions, self.split(outputs, part), strict=True):
                outcome.outputs[position] = row_outputs
            return
        except Exception as exc:
            oom = is_out_of_memory(exc)
            outcome.failed_runs.append("oom" if oom else "error")
            if len(positions) == 1:
                log.error("batcher %s: a model run of one row failed: %r", self.name, exc)
                outcome.errors[positions[0]] = exc
                return
            log.warning(
                "batcher %s: a batch of %d rows failed (%s); running it again in %s",
                self.name,
                len(positions),
                "out of memory" if oom else repr(exc),
                "halves" if oom else "single rows",
            )
            outcome.retried_rows += len(positions)
        half = len(positions) // 2
        parts = [positions[:half], positions[half:]] if oom else [[p] for p in positions]
        for sub in parts:
            self._run_part(rows, sub, None, outcome)

    def split(self, outputs: dict[str, np.ndarray], rows: Sequence[Row]) -> list[RowOutputs]:
        """Each row's outputs, its padding removed from the sequence outputs."""
        count, width = len(rows), max(len(r) for r in rows)
        for name, array in outputs.items():
            if array.ndim == 0 or array.shape[0] != count:
                raise ValueError(f"output {name} has shape {array.shape}, expected {count} rows first")
        sequence = self.sequence_outputs
        if sequence is None:
            sequence = frozenset(n for n, a in outputs.items() if a.ndim >= 2 and a.shape[1] == width)
        return [
            {name: array[j, : len(row)] if name in sequence else array[j] for name, array in outputs.items()}
            for j, row in enumerate(rows)
        ]
