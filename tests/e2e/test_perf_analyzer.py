"""Triton's perf_analyzer, unchanged, against the server over gRPC (unary and streaming) and HTTP:
a short bounded measurement must finish with zero errors (perf_analyzer also stops when metadata,
config or statistics fail).

perf_analyzer comes from `tools/perf-analyzer.sh --install` (it downloads the client and, where the
system's glibc is too old, a newer one into a cache folder, nothing system-wide; it needs the package
registries). A failed setup fails the test: it is not skipped.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import ROOT, ServerProcess

WRAPPER = ROOT / "tools" / "perf-analyzer.sh"
DATA = ROOT / "loadtests" / "perf_analyzer"
BOUNDED = ["--concurrency-range", "2", "--measurement-interval", "1000", "--stability-percentage", "999"]
BOUNDED += ["--max-trials", "3"]


@pytest.fixture(scope="module")
def perf_analyzer() -> Path:
    done = subprocess.run(["bash", str(WRAPPER), "--install"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"perf_analyzer setup failed (it needs PyPI and Debian):\n{done.stderr[-3000:]}"
    return WRAPPER


def failed_v2_requests(server: ServerProcess) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "electra_requests_total"
        and sample.labels.get("protocol") == "v2"
        and sample.labels.get("code") != "200"
    )


@pytest.mark.parametrize(
    ("model", "data", "protocol", "extra"),
    [
        ("demo-classify", "classify.json", "grpc", []),
        ("demo-classify", "classify.json", "http", []),
        ("demo-qa", "qa.json", "grpc", ["--streaming"]),
    ],
    ids=["classify-grpc", "classify-http", "qa-grpc-stream"],
)
def test_perf_analyzer_measures_without_errors(
    perf_analyzer: Path, server: ServerProcess, model: str, data: str, protocol: str, extra: list[str]
) -> None:
    port = server.grpc_port if protocol == "grpc" else server.http_port
    failures_before = failed_v2_requests(server)
    command = [str(perf_analyzer), "-m", model, "-u", f"127.0.0.1:{port}", "-i", protocol]
    command += ["--input-data", str(DATA / data), *BOUNDED, *extra]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    # perf_analyzer read the server-side statistics and every request succeeded.
    successes = [int(n) for n in re.findall(r"Successful request count: (\d+)", output)]
    assert successes and all(n > 0 for n in successes), output[-4000:]
    assert "error" not in output.lower(), output[-4000:]
    assert failed_v2_requests(server) == failures_before
