"""Closed-loop HTTP load with wrk (Debian package `wrk`): C connections, each sending the next body
as soon as its previous answer arrived. The Lua script cycles through a file of JSON bodies."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from loadtests.clients import LoadResult
from loadtests.stats import LatencySummary

SCRIPT = Path(__file__).resolve().parent.parent / "wrk" / "post_bodies.lua"
INSTALL_HINT = "wrk is not installed: `apt-get install -y wrk` (Debian/Ubuntu), or pass --client python"


def available() -> bool:
    return shutil.which("wrk") is not None


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(
    url: str,
    bodies_file: Path,
    *,
    concurrency: int,
    duration_s: float,
    protocol: str = "rest",
    threads: int = 1,
    timeout_s: float = 30.0,
    offset: int = 0,
    inputs_per_request: int = 1,
    prefix: Sequence[str] = (),
) -> LoadResult:
    """One wrk run; `prefix` (e.g. taskset -c 1) pins the load generator."""
    if not available():
        raise RuntimeError(INSTALL_HINT)
    threads = max(1, min(threads, concurrency))
    command = [
        *prefix,
        "wrk",
        f"-t{threads}",
        f"-c{concurrency}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={max(1, round(timeout_s))}s",
        "-s",
        str(SCRIPT),
        url,
        "--",
        str(bodies_file),
        str(offset),
    ]
    before = children_cpu_s()
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + timeout_s + 30)
    cpu = children_cpu_s() - before
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    report = parse_output(done.stdout)
    errors = sum(report[k] for k in report if k.startswith("errors_"))
    ok = max(0, report["requests"] - report["errors_status"])
    micro = 1e-6
    latency = LatencySummary(
        count=report["requests"],
        mean_s=report["mean_us"] * micro,
        p50_s=report["p50_us"] * micro,
        p90_s=report["p90_us"] * micro,
        p99_s=report["p99_us"] * micro,
        max_s=report["max_us"] * micro,
    )
    return LoadResult(
        protocol=protocol,
        mode="closed",
        client="wrk",
        concurrency=concurrency,
        offered_rate=None,
        duration_s=report["duration_us"] * micro,
        requests=ok,
        errors=int(errors),
        latency=latency,
        client_cpu_s=cpu,
        inputs_per_request=inputs_per_request,
        extra={k: v for k, v in report.items() if k.startswith("errors_")},
    )


def parse_output(stdout: str) -> dict[str, float]:
    """The JSON line that post_bodies.lua prints in `done`."""
    for line in stdout.splitlines():
        if line.startswith("WRK_JSON "):
            return json.loads(line[len("WRK_JSON ") :])
    raise RuntimeError(f"wrk printed no WRK_JSON line (is the script {SCRIPT} in use?):\n{stdout[-2000:]}")
