"""The closed-loop batching simulation (loadtests/batch_sim.py): it drives the batcher's own
selection, so its batches must obey the batcher's limits, and its figures must move the way the
policy says they do."""

from __future__ import annotations

import pytest

from loadtests.batch_sim import CostModel, closed_loop, main, offline
from loadtests.data import target_lengths

LENGTHS = target_lengths(400, seed=7)
COST = CostModel()


def test_offline_plan_is_sorted_full_batches() -> None:
    ceiling = offline(LENGTHS, 8, 2, COST)
    assert ceiling.mean_batch == pytest.approx(8, abs=0.1)
    assert ceiling.padding_ratio < 0.05
    # Two workers share the total run time.
    assert offline(LENGTHS, 8, 1, COST).seqs_per_s == pytest.approx(ceiling.seqs_per_s / 2)


def test_the_padding_limit_trades_batch_size_for_padding() -> None:
    tight = closed_loop(LENGTHS, COST, max_padding_ratio=0.05, answers=1500)
    loose = closed_loop(LENGTHS, COST, max_padding_ratio=0.2, answers=1500)
    unlimited = closed_loop(LENGTHS, COST, max_padding_ratio=None, answers=1500)
    assert tight.padding_ratio < loose.padding_ratio < unlimited.padding_ratio
    assert tight.mean_batch < loose.mean_batch <= unlimited.mean_batch <= 8
    # 32 clients and 2 runs leave ~20 rows to choose from: close to, but below, the sorted plan.
    ceiling = offline(LENGTHS, 8, 2, COST)
    assert 0.7 < tight.seqs_per_s / ceiling.seqs_per_s < 1.0
    assert unlimited.seqs_per_s < tight.seqs_per_s  # mixed lengths without a limit: padding dominates


def test_one_client_runs_one_row_at_a_time() -> None:
    alone = closed_loop(LENGTHS, COST, clients=1, answers=200)
    assert alone.mean_batch == 1 and alone.padding_ratio == 0


def test_cli_prints_each_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--texts", "300", "--padding", "0.1", "--max-batch-size", "4", "8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("offline ceiling b8 sorted")
    assert len(lines) == 3 and all("x the ceiling" in line for line in lines[1:])
