"""The bench's summary, computed from the phases' plain-dict results without running anything."""

from __future__ import annotations

import pytest

from loadtests.summary import server_flag, stage_p99, summarize


def _closed(protocol: str, clients: int, seqs: float, padding: float | None = None) -> dict:
    run = {"protocol": protocol, "concurrency": clients, "seqs_per_s": seqs, "throughput": seqs}
    if padding is not None:
        run["batch"] = {"mean_padding_ratio": padding}
    return run


ROUNDS = [
    {
        "offline": 200.0,
        "offline_tok": 190.0,
        "served": 180.0,
        "served_per_cpu_s": 90.0,
        "offline_per_cpu_s": 100.0,
        "client_cores": 0.0,
        "other_cores": 0.1,
        "grpc": 171.0,
        "grpc_per_cpu_s": 81.0,
    },
    {
        "offline": 220.0,
        "offline_tok": 200.0,
        "served": 176.0,
        "served_per_cpu_s": 88.0,
        "offline_per_cpu_s": 110.0,
        "client_cores": 0.2,
        "other_cores": 0.3,
        "grpc": 176.0,
        "grpc_per_cpu_s": 88.0,
    },
]


def _summary(**changes: object) -> dict:
    kwargs = {
        "device": "cpu",
        "cores": 2,
        "server_args": [],
        "offline": {"best": {"seqs_per_s": 210.0}},
        "rounds": ROUNDS,
        "closed": [
            _closed("rest", 8, 150.0),
            _closed("rest", 32, 178.0, padding=0.07),
            _closed("v2-http", 32, 150.0),
            _closed("v2-grpc", 32, 159.0),
        ],
        "opened": [],
        "versus": {"naive_best": 50.0, "ours_over_naive": 3.5, "rounds": [{}, {}]},
        "memory": {"server RSS after the load, settled (MB)": 380.0, "models loaded": 4},
        "ab_root": None,
    }
    kwargs.update(changes)
    return summarize(**kwargs)  # type: ignore[arg-type]


def test_ratios_are_medians_of_the_rounds() -> None:
    s = _summary()
    assert s["served_32"] == pytest.approx(178.0)
    assert s["ceiling"] == pytest.approx(210.0)
    assert s["served_over_ceiling"] == pytest.approx((180 / 200 + 176 / 220) / 2)
    assert s["served_over_ceiling_of_medians"] == pytest.approx(178 / 210)
    # per CPU-second, scaled by the cores the client left: 0.9 x 2/2 and 0.8 x 1.8/2
    assert s["served_over_ceiling_cpu"] == pytest.approx((0.9 + 0.72) / 2)
    assert s["grpc_over_rest"] == pytest.approx((0.95 + 1.0) / 2)
    assert s["grpc_over_rest_cpu"] == pytest.approx((0.9 + 1.0) / 2)
    assert s["grpc_stream_over_rest"] is None  # neither in the rounds nor in the closed loop
    assert s["v2_grpc_over_http"] == pytest.approx(159 / 150)
    assert s["saturation"] == 178.0 and s["padding_ratio_32"] == 0.07
    assert s["versus_rounds"] == 2 and s["ours_over_naive"] == 3.5
    assert s["server_rss_mb"] == 380.0 and s["models_loaded"] == 4
    assert s["other_cores_rounds"] == pytest.approx(0.2)
    assert "ab_ratio" not in s


def test_without_rounds_the_closed_loop_stands_in() -> None:
    s = _summary(rounds=[], closed=[_closed("rest", 32, 170.0), _closed("grpc", 32, 153.0)])
    assert s["ceiling"] == 210.0 and s["served_32"] is None
    assert s["served_over_ceiling"] == pytest.approx(170 / 210)  # the best served figure
    assert s["grpc_over_rest"] is None  # REST @32 comes from the rounds only


def test_ab_and_latency_bounds() -> None:
    rounds = [dict(r, served_ab=160.0) for r in ROUNDS]
    half = {
        "fraction": 0.5,
        "latency": {"p99_s": 0.05},
        "batch_compute_s": 0.01,
        "extra": {"stages_ms": {"x-inference-time": {"p99": 30.0}}},
    }
    s = _summary(rounds=rounds, opened=[half], ab_root="/elsewhere", server_args=["--max-queue-delay-ms=4"])
    assert s["ab_ratio"] == pytest.approx(178 / 160) and s["ab_root"] == "/elsewhere"
    assert s["p99_half_saturation_s"] == 0.05
    assert s["p99_bound_s"] == pytest.approx(2 * (0.004 + 0.030))
    assert s["p99_bound_mean_s"] == pytest.approx(2 * (0.004 + 0.01))


def test_server_flag_and_stage_p99(monkeypatch: pytest.MonkeyPatch) -> None:
    assert server_flag(["--max-queue-delay-ms", "3"], "--max-queue-delay-ms", 2.0) == 3.0
    monkeypatch.setenv("ELECTRA_MAX_QUEUE_DELAY_MS", "5")
    assert server_flag([], "--max-queue-delay-ms", 2.0) == 5.0
    assert stage_p99(None, "x-queue-time") is None
    assert stage_p99({"extra": {"stages_ms": {"x-queue-time": {"p99": 2.0}}}}, "x-queue-time") == 0.002
