"""A batch's run on its own: padding, each row's outputs cut to its length, and the retries that
keep a failure to the rows that cause it (halves after out of memory, single rows otherwise)."""

from __future__ import annotations

import numpy as np
import pytest

from server.core.batching.execution import BatchExecution, is_out_of_memory, pad_rows
from server.core.rows import Row


def row(n: int, token: int = 5) -> Row:
    return Row(np.full(n, token, dtype=np.int64), np.zeros(n, dtype=np.int64))


def echo(input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray) -> dict[str, np.ndarray]:
    return {"logits": input_ids.astype(np.float32)[:, :, None], "pooled": attention_mask.sum(1).astype(np.float32)}


def test_padding() -> None:
    ids, mask, types = pad_rows([row(2, 7), row(4, 9)], pad_token_id=0)
    assert ids.tolist() == [[7, 7, 0, 0], [9, 9, 9, 9]]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert types.shape == (2, 4) and ids.dtype == np.int64


def test_outputs_are_cut_to_each_row() -> None:
    execution = BatchExecution(echo, pad_token_id=0, sequence_outputs=["logits"], name="m")
    outcome = execution.run([row(2, 7), row(4, 9)])
    assert outcome.errors == [None, None] and not outcome.failed_runs
    first, second = outcome.outputs
    assert first is not None and second is not None
    assert first["logits"].shape == (2, 1) and second["logits"].shape == (4, 1)
    assert first["pooled"] == 2 and second["pooled"] == 4


def test_a_failing_row_fails_alone() -> None:
    def run(ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> dict[str, np.ndarray]:
        if (ids == 13).any():
            raise RuntimeError("bad input")
        return echo(ids, mask, types)

    execution = BatchExecution(run, pad_token_id=0, sequence_outputs=["logits"], name="m")
    outcome = execution.run([row(2), row(3, 13), row(2)])
    assert [e is None for e in outcome.errors] == [True, False, True]
    assert outcome.failed_runs == ["error", "error"] and outcome.retried_rows == 3
    assert outcome.outputs[0] is not None and outcome.outputs[1] is None and outcome.any_succeeded


def test_out_of_memory_splits_in_halves() -> None:
    shapes: list[int] = []

    def run(ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> dict[str, np.ndarray]:
        shapes.append(ids.shape[0])
        if ids.shape[0] > 2:
            raise RuntimeError("CUDA out of memory")
        return echo(ids, mask, types)

    execution = BatchExecution(run, pad_token_id=0, sequence_outputs=None, name="m")
    outcome = execution.run([row(2) for _ in range(8)])
    assert shapes == [8, 4, 2, 2, 4, 2, 2]
    assert all(e is None for e in outcome.errors) and outcome.failed_runs == ["oom", "oom", "oom"]


@pytest.mark.parametrize(
    ("error", "oom"),
    [(MemoryError(), True), (RuntimeError("Failed to allocate memory"), True), (RuntimeError("shape mismatch"), False)],
)
def test_out_of_memory_is_read_from_the_message(error: BaseException, oom: bool) -> None:
    assert is_out_of_memory(error) is oom


def test_a_probe_runs_one_padding_row() -> None:
    seen: list[tuple[int, ...]] = []

    def run(ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> dict[str, np.ndarray]:
        seen.append(ids.shape)
        return {}

    BatchExecution(run, pad_token_id=0, sequence_outputs=None, name="m").probe()
    assert seen == [(1, 8)]
