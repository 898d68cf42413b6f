"""loadtests/owner.py: its arithmetic on made-up points, and one short real run against a server's
model owner (every request sent is answered once, with nothing unknown, lost or failed)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from loadtests import owner
from loadtests.owner import Point, Report, parse_args, render


def test_summary_takes_medians_per_cost_model_and_message_size() -> None:
    report = Report(points=[
        Point("fast", 1, 0, 9000, 1.0, 0, 512), Point("fast", 1, 1, 10000, 1.0, 0, 512),
        Point("fast", 1, 2, 30000, 1.5, 0, 512),  # an outlier round
        Point("gpu", 8, 0, 8000, 0.5, 2, 512),
    ])  # fmt: skip
    fast, gpu = report.summary()
    assert (fast["cost"], fast["per_message"], fast["rounds"]) == ("fast", 1, 3)
    assert fast["requests_per_s"] == 10000 and fast["owner_cores"] == 1.0
    assert fast["owner_us_per_request"] == pytest.approx(100.0)  # 1 core over 10,000 a second
    assert fast["per_owner_core"] == pytest.approx(10000)
    assert gpu["per_owner_core"] == pytest.approx(16000) and gpu["errors"] == 2
    table = render({"conditions": {}, "summary": report.summary()})
    assert "| fast | 1 | 10000 | 1.00 | 100 | 10000 | 0 |" in table


def test_a_point_with_no_cpu_or_no_answers_divides_by_nothing() -> None:
    idle = Point("gpu", 1, 0, 0.0, 0.0, 0, 8)
    assert idle.owner_us_per_request == 0.0 and idle.per_owner_core == 0.0


def test_arguments_are_checked() -> None:
    args = parse_args(["--costs", "fast", "--per-message", "1,4", "--inflight", "16"])
    assert args.costs == ["fast"] and args.per_message == [1, 4]
    with pytest.raises(SystemExit):
        parse_args(["--costs", "tpu"])
    with pytest.raises(SystemExit):
        parse_args(["--per-message", "32", "--inflight", "16"])


def test_a_short_run_against_a_real_model_owner(export_model: Callable[..., Path], tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    shutil.copytree(export_model("classify", labels=["NEGATIVE", "POSITIVE"]), repository / "tiny-classify")
    out = tmp_path / "owner.json"
    code = owner.main([
        "--repository", str(repository), "--model", "tiny-classify", "--costs", "fast", "--per-message", "1,4",
        "--inflight", "64", "--rounds", "1", "--duration", "1", "--out", str(out),
    ])  # fmt: skip
    result = json.loads(out.read_text())
    assert code == 0
    assert [(p["per_message"], p["errors"]) for p in result["points"]] == [(1, 0), (4, 0)]
    assert all(p["requests_per_s"] > 100 and 0 < p["owner_cores"] < 4 for p in result["points"])
    assert out.with_suffix(".md").read_text().startswith("# The model owner alone")
