"""loadtests/soak.py's pure parts: the outcome of each answer, the windows and medians of the
samples, the growth verdict, the report; /proc sampling of this process; and one real run of a
few seconds against a server on a tiny model (every protocol, the verdict, the files)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from loadtests import procstat, soak
from loadtests.soak import Limits, Tally, classify_outcome, growth, judge, make_sample, summarise

MB = 1024 * 1024

# -- outcomes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expect", "status", "category"),
    [
        ("ok", "200", "ok"),
        ("ok", "OK", "ok"),
        ("ok", "422", "error"),  # a valid request refused: the client or the server is wrong
        ("ok", "500", "error"),
        ("ok", "503", "error"),
        ("ok", "INTERNAL", "error"),
        ("ok", "UNKNOWN", "error"),
        ("ok", "UNAVAILABLE", "error"),
        ("ok", "transport:ServerDisconnectedError", "error"),
        ("ok", "timeout", "error"),
        ("ok", "missing-response", "error"),
        ("ok", "DEADLINE_EXCEEDED", "error"),  # no deadline was asked for: a hang
        ("ok", "429", "shed"),
        ("ok", "RESOURCE_EXHAUSTED", "shed"),
        ("reject", "400", "rejected"),
        ("reject", "404", "rejected"),
        ("reject", "413", "rejected"),
        ("reject", "422", "rejected"),
        ("reject", "INVALID_ARGUMENT", "rejected"),
        ("reject", "NOT_FOUND", "rejected"),
        ("reject", "RESOURCE_EXHAUSTED", "rejected"),  # too many inputs
        ("reject", "200", "error"),  # a malformed request accepted
        ("reject", "OK", "error"),
        ("reject", "500", "error"),
        ("reject", "INTERNAL", "error"),
        ("reject", "429", "shed"),
        ("deadline", "504", "deadline"),
        ("deadline", "DEADLINE_EXCEEDED", "deadline"),
        ("deadline", "200", "ok"),  # made it in time
        ("deadline", "500", "error"),
        ("cancel", "cancelled", "cancelled"),
        ("cancel", "CANCELLED", "cancelled"),
        ("cancel", "disconnected", "cancelled"),
        ("cancel", "200", "ok"),  # answered before the client gave up
        ("cancel", "INTERNAL", "error"),
        ("cancel", "transport:ClientOSError", "error"),
        ("ok", "cancelled", "error"),  # nobody cancelled it
    ],
)
def test_classify_outcome(expect: str, status: str, category: str) -> None:
    assert classify_outcome(expect, status) == category


def test_classify_outcome_rejects_an_unknown_expectation() -> None:
    with pytest.raises(ValueError):
        classify_outcome("maybe", "200")


def test_tally_counts_by_protocol_status_category_and_operation() -> None:
    tally = Tally(max_examples=1)
    tally.add("rest", "rest", "ok", "200")
    tally.add("rest", "rest-malformed", "reject", "422")
    tally.add("grpc", "grpc", "ok", "INTERNAL", "boom", at_s=3.25)
    tally.add("grpc", "grpc", "ok", "UNKNOWN", "again")
    out = tally.as_dict()
    assert out["total"] == 4 and out["errors"] == 2
    assert out["by_protocol_status"] == {"grpc": {"INTERNAL": 1, "UNKNOWN": 1}, "rest": {"200": 1, "422": 1}}
    assert out["by_protocol_category"] == {"grpc": {"error": 2}, "rest": {"ok": 1, "rejected": 1}}
    assert out["by_operation_category"]["rest-malformed"] == {"rejected": 1}
    assert out["error_examples"] == [
        {"t_s": 3.25, "protocol": "grpc", "operation": "grpc", "expect": "ok", "status": "INTERNAL", "detail": "boom"}
    ]  # only max_examples kept


def test_the_mix_is_mostly_valid_and_follows_what_the_server_offers() -> None:
    total = sum(op.weight for op in soak.MIX)
    valid = sum(op.weight for op in soak.MIX if op.expect == "ok")
    assert 0.75 < valid / total < 0.9
    assert {op.expect for op in soak.MIX} == set(soak.EXPECTS)
    assert len({op.name for op in soak.MIX}) == len(soak.MIX)
    for op in soak.MIX:  # every operation has its coroutine
        assert callable(getattr(soak.Traffic, "op_" + op.name.replace("-", "_")))
    rest_only = soak.usable_mix({"rest": True, "grpc": False, "v2-http": False, "v2-grpc": False})
    assert rest_only and {op.needs for op in rest_only} == {"rest"}


def test_text_limits_fit_the_served_models() -> None:
    assert soak.text_limits({"classify": 512, "qa": 384}) == (128, 128)  # two 128-token texts: 255
    assert soak.text_limits({"classify": 128, "tag": 512, "qa": 64}) == (128, 64)  # qa windows: not a limit
    assert soak.text_limits({"discriminate": 32}) == (32, 16)
    assert soak.text_limits({}) == (128, 64)


# -- samples and verdict --------------------------------------------------------------------------


def series(
    rss_mb: Callable[[float], float], fds: Callable[[float], int], threads: int = 30, n: int = 61, every: float = 1.0
) -> list[dict[str, Any]]:
    usage = lambda t: [procstat.ProcessUsage(100, int(rss_mb(t) * MB), fds(t), threads)]  # noqa: E731
    return [make_sample(k * every, usage(k * every), requests=10 * k) for k in range(n)]


def test_make_sample_sums_the_tree_and_keeps_each_process() -> None:
    usage = [procstat.ProcessUsage(1, 100 * MB, 20, 10), procstat.ProcessUsage(2, 50 * MB, 15, 5)]
    sample = make_sample(1.23456, usage, requests=7, errors=1)
    assert sample["t_s"] == 1.235
    assert (sample["rss_bytes"], sample["fds"], sample["threads"], sample["processes"]) == (150 * MB, 35, 15, 2)
    assert sample["by_pid"]["2"] == {"rss_bytes": 50 * MB, "fds": 15, "threads": 5}
    assert (sample["requests"], sample["errors"]) == (7, 1)


def test_growth() -> None:
    assert growth(100, 105) == pytest.approx(0.05)
    assert growth(100, 90) == pytest.approx(-0.1)
    assert growth(0, 0) == 0.0
    assert math.isinf(growth(0, 1))


def test_summarise_compares_the_medians_of_the_first_and_last_windows_after_the_warm_up() -> None:
    # A steep rise during the warm-up (not judged), then flat with one spike in each window.
    samples = series(lambda t: 100 + 2 * t if t < 10 else 120, lambda t: 40)
    samples[12]["rss_bytes"] = 500 * MB  # a spike does not move a median
    summary = summarise(samples, warmup_s=10)
    assert summary["ok"]
    assert summary["window_s"] == pytest.approx(10)  # a fifth of the 50 s after the warm-up
    assert summary["first_window"] == [10.0, 20.0, 11] and summary["last_window"] == [50.0, 60.0, 11]
    rss = summary["metrics"]["rss_bytes"]
    assert rss["first"] == rss["last"] == 120 * MB and rss["growth"] == 0
    assert rss["max"] == 500 * MB and rss["min"] == 120 * MB
    assert summary["process_sets"] == [["100"]]


def test_summarise_keeps_the_two_windows_apart() -> None:
    samples = series(lambda t: 100 + t, lambda t: 40, n=11)
    summary = summarise(samples, warmup_s=2, window_s=100)  # asked for more than half the span
    first, last = summary["first_window"], summary["last_window"]
    assert first[1] < last[0]
    assert summary["window_s"] == pytest.approx(4)
    # 2-6 s and 6-10 s share the sample at 6 s: each window gives it up, 2-5 s against 7-10 s.
    assert (first[2], last[2]) == (4, 4)
    assert summary["metrics"]["rss_bytes"]["first"] == pytest.approx(103.5 * MB)
    assert summary["metrics"]["rss_bytes"]["last"] == pytest.approx(108.5 * MB)
    two = summarise(samples[:4], warmup_s=2)  # only two samples after the warm-up: one each
    assert two["first_window"][2] == 1 and two["last_window"][2] == 1


def test_summarise_needs_two_samples_after_the_warm_up() -> None:
    summary = summarise(series(lambda t: 100, lambda t: 40, n=5), warmup_s=4)
    assert not summary["ok"] and "1 sample(s)" in summary["reason"]
    assert not judge(summary, None, Limits())["passed"]


def test_judge_passes_a_flat_run() -> None:
    tally = Tally()
    tally.add("rest", "rest", "ok", "200")
    verdict = judge(summarise(series(lambda t: 200 + 0.1 * t, lambda t: 40), 10), tally, Limits())
    assert verdict["passed"], verdict["reasons"]
    assert set(verdict["checks"]) == {"rss_bytes", "fds", "threads"}


def test_judge_fails_rss_growth_above_the_limit() -> None:
    leaking = series(lambda t: 200 + 0.5 * t, lambda t: 40)  # ~ +10% between the windows
    verdict = judge(summarise(leaking, 10), None, Limits(max_growth=0.05))
    assert not verdict["passed"]
    assert len(verdict["reasons"]) == 1 and verdict["reasons"][0].startswith("rss_bytes grew +")
    assert not verdict["checks"]["rss_bytes"]["passed"] and verdict["checks"]["fds"]["passed"]
    assert judge(summarise(leaking, 10), None, Limits(max_growth=0.2))["passed"]


def test_judge_needs_fds_to_grow_in_proportion_and_in_number() -> None:
    few = series(lambda t: 200, lambda t: 20 if t < 30 else 26)  # +30%, but 6 descriptors
    assert judge(summarise(few, 10), None, Limits(fd_slack=10))["passed"]
    assert not judge(summarise(few, 10), None, Limits(fd_slack=5))["passed"]
    many = series(lambda t: 200, lambda t: 40 + int(t))  # one more a second: +75%, +30
    verdict = judge(summarise(many, 10), None, Limits())
    assert not verdict["passed"] and "fds grew" in verdict["reasons"][0]


def test_judge_fails_on_unexpected_answers_and_on_no_answers() -> None:
    flat = summarise(series(lambda t: 200, lambda t: 40), 10)
    tally = Tally()
    tally.add("rest", "rest", "ok", "200")
    tally.add("grpc", "grpc", "ok", "INTERNAL")
    verdict = judge(flat, tally, Limits())
    assert not verdict["passed"] and verdict["reasons"] == ["1 unexpected answer(s) of 2 (grpc 1)"]
    assert judge(None, Tally(), Limits())["reasons"] == ["no request was answered"]


def test_judge_fails_when_the_servers_processes_change() -> None:
    samples = series(lambda t: 200, lambda t: 40)
    for s in samples[40:]:  # a worker died and another took its place
        s["by_pid"] = {"100": s["by_pid"]["100"], "201": s["by_pid"]["100"]}
    verdict = judge(summarise(samples, 10), None, Limits(max_growth=10, fd_slack=100, thread_slack=100))
    assert not verdict["passed"] and "processes changed" in verdict["reasons"][0]


def test_render_and_plot(tmp_path: Path) -> None:
    samples = series(lambda t: 200 + 0.5 * t, lambda t: 40)
    tally = Tally()
    tally.add("rest", "rest", "ok", "200")
    tally.add("rest", "rest", "ok", "200")
    tally.add("rest", "rest-malformed", "reject", "404")
    tally.add("grpc", "grpc", "ok", "INTERNAL", "boom")
    summary = summarise(samples, 10)
    result = {
        "conditions": {
            "server": "electra-serve",
            "duration_s": 60,
            "warmup_s": 10,
            "sample_every_s": 1,
            "concurrency": 4,
        },
        "verdict": judge(summary, tally, Limits()),
        "summary": summary,
        "outcomes": tally.as_dict(),
        "after": samples[-1],
        "samples": samples,
        "runtime_s": 70.0,
    }
    text = soak.render(result)
    assert text.startswith("# Soak: FAILED")
    assert "| rest | 2 | 1 | 0 | 0 | 0 | 0 | 200 2, 404 1 |" in text
    assert "| grpc | 0 | 0 | 0 | 0 | 0 | 1 | INTERNAL 1 |" in text
    assert "rss_bytes grew" in text and "boom" in text
    written = soak.write_outputs(result, tmp_path, "x")
    assert [p.name for p in written] == ["x.json", "x.md", "x.png"]
    assert json.loads((tmp_path / "x.json").read_text())["verdict"]["passed"] is False
    assert (tmp_path / "x.png").stat().st_size > 10_000


def test_only_loopback_targets_are_accepted() -> None:
    with pytest.raises(SystemExit):
        soak.parse_args(["--url", "http://10.0.0.1:8000"])
    with pytest.raises(SystemExit):
        soak.parse_args(["--url", "http://127.0.0.1:8000", "--server-arg=--workers=2"])
    with pytest.raises(SystemExit):
        soak.parse_args(["--duration-s", "10", "--warmup-s", "10"])
    args = soak.parse_args(["--url", "http://127.0.0.1:8000", "--grpc", "127.0.0.1:8001", "--pid", "1"])
    assert args.pid == 1 and args.duration_s == 600 and args.max_growth == 0.05


# -- /proc ----------------------------------------------------------------------------------------


def test_tree_usage_counts_this_process_fds_and_threads() -> None:
    (me,) = [u for u in procstat.tree_usage(os.getpid()) if u.pid == os.getpid()]
    assert me.rss_bytes > 0 and me.fds == len(os.listdir(f"/proc/{os.getpid()}/fd"))
    read, write = os.pipe()
    release = threading.Event()
    thread = threading.Thread(target=release.wait)
    thread.start()
    try:
        assert procstat.fd_count(os.getpid()) >= me.fds + 2
        assert procstat.thread_count(os.getpid()) == me.threads + 1
    finally:
        release.set()
        thread.join()
        os.close(read)
        os.close(write)


# -- one real run ---------------------------------------------------------------------------------


def test_a_short_soak_against_a_real_server_passes(export_model: Callable[..., Path], tmp_path: Path) -> None:
    """Every protocol for a few seconds against a tiny classifier: no unexpected answer, files written."""
    repository = tmp_path / "repository"
    model = export_model("classify", labels=["NEGATIVE", "POSITIVE"])
    shutil.copytree(model, repository / "tiny-classify")  # alone: the session repository holds other models
    # In its own process: the soak's KServe gRPC client loads the project's stubs, whose message names
    # are tritonclient's too, and the test session may have imported tritonclient's already.
    code = subprocess.run([
        sys.executable, "-m", "loadtests.soak",
        "--model-repository", str(repository), "--duration-s", "6", "--warmup-s", "2", "--sample-every-s", "0.5",
        "--concurrency", "4", "--results", str(tmp_path / "results"), "--name", "smoke",
        "--max-growth", "1", "--fd-slack", "1000", "--thread-slack", "1000",  # 6 s prove no leak either way
    ], cwd=Path(__file__).resolve().parents[2], timeout=300).returncode  # fmt: skip
    result = json.loads((tmp_path / "results" / "smoke.json").read_text())
    assert code == 0, (result["verdict"], result["outcomes"]["error_examples"])
    outcomes = result["outcomes"]
    assert outcomes["errors"] == 0 and outcomes["total"] > 50
    assert {"rest", "grpc", "grpc-stream", "v2-http", "v2-grpc"} <= set(outcomes["by_protocol_category"])
    assert sum(c.get("rejected", 0) for c in outcomes["by_protocol_category"].values()) > 0
    assert result["summary"]["ok"] and result["samples"][0]["processes"] == 1
    assert (tmp_path / "results" / "smoke.png").exists() and (tmp_path / "results" / "smoke.md").exists()
