"""Runs `loadtests.clients.pyload` in child processes and folds their output into a LoadResult.

Several processes split the load (concurrency or rate) when one Python process would be the
bottleneck (a GPU host serving thousands of requests a second); their CPU is measured as rusage
of the children."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from loadtests.clients import LoadResult
from loadtests.clients.wrk import children_cpu_s
from loadtests.stats import LatencySummary


def run(
    *,
    target: str,  # http | grpc
    protocol: str,
    bodies_file: Path,
    task: str,
    mode: str,
    duration_s: float,
    url: str | None = None,
    address: str | None = None,
    concurrency: int | None = None,
    rate: float | None = None,
    seed: int = 0,
    offset: int = 0,
    processes: int = 1,
    channels: int = 1,
    grpc_call: str = "unary",  # typed gRPC: unary | stream
    timeout_s: float = 30.0,
    drain_s: float = 15.0,
    inputs_per_request: int = 1,
    prefix: Sequence[str] = (),
    server_pid: int | None = None,
) -> LoadResult:
    if mode == "closed" and not concurrency:
        raise ValueError("closed loop needs a concurrency")
    if mode == "open" and not rate:
        raise ValueError("open loop needs a rate")
    processes = max(1, min(processes, concurrency or processes))
    with tempfile.TemporaryDirectory(prefix="pyload-") as scratch:
        children = []
        before = children_cpu_s()
        for k in range(processes):
            out = Path(scratch) / f"r{k}.json"
            share = (
                ["--concurrency", str(_split(concurrency or 0, processes, k))]
                if mode == "closed"
                else ["--rate", str((rate or 0) / processes)]
            )
            command = [
                *prefix,
                sys.executable,
                "-m",
                "loadtests.clients.pyload",
                "--target",
                target,
                *(["--url", url] if url else []),
                *(["--address", address] if address else []),
                "--task",
                task,
                "--bodies",
                str(bodies_file),
                "--mode",
                mode,
                *share,
                "--duration",
                str(duration_s),
                "--drain",
                str(drain_s),
                "--timeout",
                str(timeout_s),
                "--seed",
                str(seed + 1000 * k),
                "--offset",
                str(offset + 104729 * k),
                "--channels",
                str(channels),
                "--grpc-call",
                grpc_call,
                "--out",
                str(out),
                *(["--server-pid", str(server_pid)] if server_pid and k == 0 else []),
            ]
            children.append((subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), out))
        results = []
        for process, out in children:
            _, stderr = process.communicate(timeout=duration_s + drain_s + timeout_s + 60)
            if process.returncode != 0:
                raise RuntimeError(f"load generator failed ({process.returncode}): {stderr.decode()[-2000:]}")
            results.append(json.loads(out.read_text()))
        cpu = children_cpu_s() - before
    latencies = [x for r in results for x in r["latencies"]]
    errors = sum(r["errors"] for r in results)
    duration = max(r["duration_s"] for r in results)
    extra = {}
    if mode == "open":
        extra = {
            "offered": sum(r["offered"] for r in results),
            "lag_p99_s": max(r["lag_p99_s"] for r in results),
            "lag_p50_s": max(r["lag_p50_s"] for r in results),
        }
    # Server stages as the server reported them (process 0's sample when several).
    if results[0].get("stages_ms"):
        extra["stages_ms"] = results[0]["stages_ms"]
    # The children's own CPU during the load (each measured from its first request on); startup
    # (imports) is excluded from what is reported as the load generator's cost.
    extra["client_cpu_total_s"] = cpu
    first = results[0]
    if server_pid and first.get("meter_wall_s"):
        wall = first["meter_wall_s"]
        client = sum(r["client_cpu_s"] for r in results)
        extra["cpu"] = {
            "wall_s": wall,
            "server_cores": first["server_cpu_s"] / wall,
            "client_cores": client / wall,
            "other_cores": max(0.0, first["machine_busy_s"] - first["server_cpu_s"] - client) / wall,
        }
    return LoadResult(
        protocol=protocol,
        mode=mode,
        client="python",
        concurrency=concurrency if mode == "closed" else None,
        offered_rate=rate if mode == "open" else None,
        duration_s=duration,
        requests=len(latencies),
        errors=errors,
        latency=LatencySummary.of(latencies),
        client_cpu_s=sum(r["client_cpu_s"] for r in results),
        inputs_per_request=inputs_per_request,
        extra=extra,
    )


def _split(total: int, parts: int, k: int) -> int:
    return total // parts + (1 if k < total % parts else 0)
