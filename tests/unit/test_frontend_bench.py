"""loadtests/frontend.py's arithmetic: medians over rounds, the scaling ratio, requests per core and
the cores a GPU host needs, from made-up points whose answers are known."""

from __future__ import annotations

import pytest

from loadtests.frontend import TARGET_RATE, Point, Report, render


def point(workers: int, rps: float, server: float, owner: float, round_no: int = 0) -> Point:
    return Point(workers, "rest", round_no, rps, 0, server, 0.1, 0.0, owner, 20.0, 40.0)


def test_summary_takes_medians_and_projects_the_cores_for_the_target() -> None:
    report = Report(points=[
        point(1, 1000, 1.0, 0.0, 0), point(1, 1200, 1.0, 0.0, 1), point(1, 5000, 1.0, 0.0, 2),  # one outlier
        point(2, 2000, 1.8, 0.2, 0), point(2, 1800, 1.8, 0.2, 1), point(2, 2200, 1.8, 0.2, 2),
    ])  # fmt: skip
    summary = report.summary(1, 2)["rest"]
    assert summary["workers_1_rps"] == 1200 and summary["workers_2_rps"] == 2000
    assert summary["ratio"] == pytest.approx(2000 / 1200)
    assert summary["rps_per_server_core"] == pytest.approx(2000 / 1.8)
    assert summary["rps_per_worker_core"] == pytest.approx(2000 / 1.6)
    # 1.6 worker cores and 0.2 owner cores for 2000 req/s: 0.9 ms of CPU a request.
    assert summary["cores_for_target"] == pytest.approx(TARGET_RATE * 1.8 / 2000)


def test_render_has_one_row_per_protocol() -> None:
    report = Report(points=[point(1, 1000, 1.0, 0.0), point(2, 1700, 1.9, 0.3)])
    table = render({"conditions": {}, "summary": report.summary(1, 2), "target_rate": TARGET_RATE})
    row = next(line for line in table.splitlines() if line.startswith("| rest"))
    assert "1.70x" in row and "| 1000 |" in row and "| 1700 |" in row


def test_each_server_is_credited_at_the_client_count_where_it_did_most() -> None:
    # One worker saturates at 64 clients and slows at 256; two workers are latency-bound at 64.
    def at(workers: int, rps: float, connections: int, server: float, owner: float) -> Point:
        return Point(workers, "rest", 0, rps, 0, server, 0.1, 0.0, owner, 20.0, 40.0, connections)

    report = Report(points=[
        at(1, 2900, 64, 1.0, 0.0), at(1, 2600, 256, 1.0, 0.0),
        at(2, 3500, 64, 1.4, 0.2), at(2, 4500, 256, 1.8, 0.2),
    ])  # fmt: skip
    summary = report.summary(1, 2)["rest"]
    assert summary["workers_1_connections"] == 64 and summary["workers_2_connections"] == 256
    assert summary["ratio"] == pytest.approx(4500 / 2900)
    assert summary["rps_per_server_core"] == pytest.approx(4500 / 1.8)
    assert summary["cores_for_target"] == pytest.approx(TARGET_RATE * 1.8 / 4500)
    table = render({"conditions": {}, "summary": report.summary(1, 2), "target_rate": TARGET_RATE})
    assert "| 2900 @64 |" in table and "| 4500 @256 |" in table
