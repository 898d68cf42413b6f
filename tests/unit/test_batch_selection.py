"""The selection policy as tables: a window of row lengths and limits in, the chosen positions (in
batch order) and whether a limit was reached out. No asyncio, no clock, no model."""

from __future__ import annotations

import pytest

from server.core.batching import BatchLimits, select_batch
from server.core.config import BatchPolicy

SORTED = BatchLimits(max_rows=4, max_tokens=1000, window=16)
FIFO = BatchLimits(max_rows=4, max_tokens=1000, fifo=True)
TOKENS_250 = BatchLimits(max_rows=4, max_tokens=250)
FIFO_TOKENS_250 = BatchLimits(max_rows=4, max_tokens=250, fifo=True)

CASES = [
    # (name, lengths, limits, expected positions, full)
    ("empty window", [], SORTED, [], False),
    ("one row waits for more", [5], SORTED, [0], False),
    ("fewer rows than a batch", [5, 6, 7], SORTED, [0, 1, 2], False),
    ("rows closest in length join the oldest", [10, 50, 11, 49, 12, 9], SORTED, [5, 0, 2, 4], True),
    ("the oldest is always in, even when longest", [60, 5, 6, 7, 8, 59], SORTED, [3, 4, 5, 0], True),
    (
        "padding keeps the short rows for a batch of their own",
        [60, 5, 6, 7, 8, 59],
        BatchLimits(max_rows=4, max_tokens=1000, max_padding_ratio=0.2),
        [5, 0],
        True,
    ),
    ("ties keep queue order", [8, 8, 8, 8, 8, 8], SORTED, [0, 1, 2, 3], True),
    ("token limit stops growth", [100, 100, 100, 100], TOKENS_250, [0, 1], True),
    (
        "attention limit stops growth",
        [10, 10, 10, 10],
        BatchLimits(max_rows=4, max_tokens=1000, max_attention=250),
        [0, 1],
        True,
    ),
    (
        "padding limit keeps a long row out",
        [10, 10, 30],
        BatchLimits(max_rows=4, max_tokens=1000, max_padding_ratio=0.2),
        [0, 1],
        True,
    ),
    ("fifo takes queue order", [10, 50, 11, 49, 12], FIFO, [0, 1, 2, 3], True),
    (
        "fifo stops at the token limit",
        [100, 100, 100],
        BatchLimits(max_rows=4, max_tokens=250, fifo=True),
        [0, 1],
        True,
    ),
    (
        "fifo padding limit is not a full batch",
        [10, 30],
        BatchLimits(max_rows=4, max_tokens=1000, max_padding_ratio=0.2, fifo=True),
        [0],
        False,
    ),
    (
        "a single row over the token limit still runs alone",
        [300, 10],
        BatchLimits(max_rows=4, max_tokens=250),
        [0],
        True,
    ),
]


@pytest.mark.parametrize(("lengths", "limits", "positions", "full"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_selection_table(lengths: list[int], limits: BatchLimits, positions: list[int], full: bool) -> None:
    assert select_batch(lengths, limits) == (positions, full)


def test_limits_from_the_policy() -> None:
    default = BatchLimits.from_policy(BatchPolicy(max_batch_size=8, max_batch_tokens=2048))
    assert (default.max_rows, default.max_tokens, default.fifo, default.window_size) == (8, 2048, False, 32)
    fifo = BatchLimits.from_policy(BatchPolicy(max_batch_size=8, sort_window=0))
    assert fifo.fifo and fifo.window_size == 8
    narrow = BatchLimits.from_policy(BatchPolicy(max_batch_size=8, sort_window=3))
    assert not narrow.fifo and narrow.window_size == 8  # never narrower than a batch
    assert BatchLimits(max_rows=4, max_tokens=10).window_size == 16


def test_every_selection_respects_the_limits() -> None:
    """Property over many windows: the oldest row is in, no position twice, limits hold beyond one row."""
    import random

    rng = random.Random(7)
    for _ in range(2000):
        limits = BatchLimits(
            max_rows=rng.randint(1, 8),
            max_tokens=rng.randint(50, 600),
            max_attention=rng.choice([None, rng.randint(500, 20000)]),
            max_padding_ratio=rng.choice([None, 0.1, 0.3]),
            fifo=rng.random() < 0.3,
        )
        lengths = [rng.randint(1, 120) for _ in range(rng.randint(1, 20))]
        positions, _ = select_batch(lengths, limits)
        assert 0 in positions
        assert len(set(positions)) == len(positions) <= limits.max_rows
        if len(positions) > 1:
            assert not limits.too_big(len(positions), max(lengths[p] for p in positions))
