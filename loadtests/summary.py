"""The bench's summary: the ratios and figures of merit, computed from what the phases measured.

A pure function of the phases' plain-dict results (the same ones `bench.json` holds), so the
report's targets can be checked without running anything.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from loadtests import report
from loadtests.stats import median, ratio


def summarize(
    *,
    device: str,
    cores: int,
    server_args: Sequence[str],
    offline: dict[str, Any],
    rounds: Sequence[dict[str, Any]],
    closed: Sequence[dict[str, Any]],
    opened: Sequence[dict[str, Any]],
    versus: dict[str, Any],
    memory: dict[str, Any],
    ab_root: str | None,
) -> dict[str, Any]:
    rest32 = median([r["served"] for r in rounds]) if rounds else None
    ceiling = median([r["offline"] for r in rounds]) if rounds else offline["best"].get("seqs_per_s")
    # The noise on this kind of host drifts within seconds: each round's ratio compares
    # neighbours in time, and their median is the figure of merit.
    round_ratio = median([r["served"] / r["offline"] for r in rounds]) if rounds else None
    # Noise-robust estimate: sequences per CPU-second of the server (all its threads) against
    # sequences per CPU-second of the offline run, scaled by the cores the load generator leaves
    # to the server. Other processes steal wall time from both, not the work per CPU-second.
    efficiency = [
        r["served_per_cpu_s"] / r["offline_per_cpu_s"] * (cores - (r.get("client_cores") or 0)) / cores
        for r in rounds
        if r.get("served_per_cpu_s") and r.get("offline_per_cpu_s")
    ]
    ceiling_tok = median([r["offline_tok"] for r in rounds]) if rounds else None
    grpc_over_rest, grpc_cpu = _over_rest(rounds, closed, rest32, "grpc", "grpc", "grpc_per_cpu_s")
    stream_over_rest, stream_cpu = _over_rest(
        rounds, closed, rest32, "grpc-stream", "grpc_stream", "grpc_stream_per_cpu_s"
    )
    # The same compiled client (perf_analyzer) over both KServe v2 transports: the protocols compared
    # without the Python gRPC client's extra CPU (one closed-loop run each, not side by side).
    v2_at_32 = {
        r["protocol"]: r["seqs_per_s"] for r in closed if r["protocol"].startswith("v2-") and r["concurrency"] == 32
    }
    half = min(opened, key=lambda r: abs(r["fraction"] - 0.5), default=None) if opened else None
    seventy = min(opened, key=lambda r: abs(r["fraction"] - 0.7), default=None) if opened else None
    delay_s = server_flag(server_args, "--max-queue-delay-ms", 2.0) / 1000
    int8 = versus.get("int8")
    best_served = max((r["seqs_per_s"] for r in closed), default=None)
    rest32_load = next((r for r in closed if r["protocol"] == "rest" and r["concurrency"] == 32), None)
    saturation = max((r["throughput"] for r in closed if r["protocol"] == "rest"), default=0.0)
    summary = {
        "ceiling": ceiling,
        "ceiling_tokenized": ceiling_tok,
        "served_32": rest32,
        "served_over_ceiling": round_ratio if device == "cpu" and rounds else ratio(best_served, ceiling),
        "served_over_ceiling_of_medians": ratio(rest32, ceiling),
        "served_over_ceiling_cpu": median(efficiency) if efficiency else None,
        "served_over_ceiling_tokenized": ratio(rest32, ceiling_tok),
        "grpc_over_rest": grpc_over_rest,
        "grpc_over_rest_cpu": median(grpc_cpu) if grpc_cpu else None,
        "grpc_stream_over_rest": stream_over_rest,
        "grpc_stream_over_rest_cpu": median(stream_cpu) if stream_cpu else None,
        "v2_grpc_over_http": ratio(v2_at_32.get("v2-grpc"), v2_at_32.get("v2-http")),
        "saturation": saturation,
        "p99_half_saturation_s": half["latency"]["p99_s"] if half else None,
        # "max queue delay + one batch's compute", the batch being the p99 of what requests rode in
        # (x-inference-time), and, stricter, the mean batch of the run.
        "p99_bound_s": 2 * (delay_s + stage_p99(half, "x-inference-time"))
        if stage_p99(half, "x-inference-time")
        else None,
        "p99_bound_mean_s": 2 * (delay_s + half["batch_compute_s"]) if half and half.get("batch_compute_s") else None,
        "p99_70_saturation_s": seventy["latency"]["p99_s"] if seventy else None,
        "padding_ratio_32": (rest32_load or {}).get("batch", {}).get("mean_padding_ratio"),
        "naive_seqs_per_s": versus.get("naive_best"),
        "ours_over_naive": versus.get("ours_over_naive"),
        "int8_over_naive": versus.get("int8_over_naive"),
        "int8_over_ours": versus.get("int8_over_ours"),
        "versus_rounds": len(versus.get("rounds") or []),
        "int8_top1_agreement": int8.get("agreement") if int8 else None,
        "server_rss_mb": memory.get("server RSS after the load, settled (MB)"),
        "models_loaded": memory.get("models loaded"),
        "best_served_seqs_per_s": best_served,
        "gpu_memory": memory.get("GPU after the load"),
        "other_cores_rounds": median([r["other_cores"] for r in rounds if r.get("other_cores") is not None])
        if rounds
        else None,
    }
    summary["other_cores_median"] = report.other_cores_median([*closed, *opened])
    if any("served_ab" in r for r in rounds):
        summary["ab_served_32"] = median([r["served_ab"] for r in rounds])
        summary["ab_ratio"] = ratio(rest32, summary["ab_served_32"])
        summary["ab_root"] = ab_root
    return summary


def _over_rest(
    rounds: Sequence[dict[str, Any]],
    closed: Sequence[dict[str, Any]],
    rest32: float | None,
    protocol: str,
    key: str,
    per_cpu_key: str,
) -> tuple[float | None, list[float]]:
    """A gRPC flavour ÷ REST @32: the median of the rounds' ratios (the closed loop's figure when no
    round measured it), and the per-round ratios per server CPU-second."""
    measured = [r for r in rounds if r.get(key)]
    at_32 = next((r["seqs_per_s"] for r in closed if r["protocol"] == protocol and r["concurrency"] == 32), None)
    over = median([r[key] / r["served"] for r in measured]) if measured else ratio(at_32, rest32)
    per_cpu = [
        r[per_cpu_key] / r["served_per_cpu_s"] for r in measured if r.get(per_cpu_key) and r.get("served_per_cpu_s")
    ]
    return over, per_cpu


def stage_p99(run: dict[str, Any] | None, stage: str) -> float | None:
    """The p99 of a server-reported stage over a run's requests, in seconds."""
    if not run:
        return None
    found = (run.get("extra") or {}).get("stages_ms", {}).get(stage)
    return found["p99"] / 1000 if found else None


def server_flag(server_args: Sequence[str], flag: str, default: float) -> float:
    """A numeric electra-serve flag as the server will read it: from the command line, else its
    ELECTRA_* environment variable, else the default."""
    for i, arg in enumerate(server_args):
        if arg.startswith(flag + "="):
            return float(arg.split("=", 1)[1])
        if arg == flag and i + 1 < len(server_args):
            return float(server_args[i + 1])
    env = os.environ.get("ELECTRA_" + flag.lstrip("-").replace("-", "_").upper())
    return float(env) if env else default
