"""KServe v2 load with Triton's perf_analyzer (compiled C++), over HTTP (`/v2`) or gRPC
(`inference.GRPCInferenceService`), closed loop at a fixed concurrency.

perf_analyzer is not packaged for Debian 12; `tools/perf-analyzer.sh --install` (or
`PERF_ANALYZER=/path/to/perf_analyzer`) makes it runnable. `find()` says how to get it when missing.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtests.clients import LoadResult
from loadtests.clients.wrk import children_cpu_s
from loadtests.stats import LatencySummary

WRAPPER = Path(__file__).resolve().parents[2] / "tools" / "perf-analyzer.sh"
INSTALL_HINT = (
    "perf_analyzer is not set up: run tools/perf-analyzer.sh --install (needs the package registries, "
    "about a minute), or set PERF_ANALYZER to a perf_analyzer binary; the bench's --setup-tools does it for you"
)


def find() -> list[str] | None:
    """The command prefix that runs perf_analyzer here, or None."""
    explicit = os.environ.get("PERF_ANALYZER")
    if explicit:
        return [explicit]
    if subprocess.run(["bash", str(WRAPPER), "--installed"], check=False).returncode == 0:
        return ["bash", str(WRAPPER)]
    on_path = shutil.which("perf_analyzer")
    return [on_path] if on_path else None


def setup() -> bool:
    """Install perf_analyzer with the project's wrapper (idempotent). True when it runs afterwards."""
    done = subprocess.run(["bash", str(WRAPPER), "--install"], capture_output=True, text=True, timeout=600)
    return done.returncode == 0 and find() is not None


def input_data(bodies: Sequence[dict[str, Any]], task: str) -> dict[str, Any]:
    """perf_analyzer's --input-data JSON for REST bodies (one input each): BYTES tensors of shape [1]."""
    data = []
    for body in bodies:
        inputs = body["inputs"]
        item = inputs[0] if isinstance(inputs, list) else inputs
        if task == "qa":
            data.append({"QUESTION": [item["question"]], "CONTEXT": [item["context"]]})
        elif isinstance(item, dict):
            entry = {"TEXT": [item["text"]]}
            if item.get("text_pair"):
                entry["TEXT_PAIR"] = [item["text_pair"]]
            data.append(entry)
        else:
            data.append({"TEXT": [item]})
    return {"data": data}


def run(
    *,
    model: str,
    protocol: str,  # v2-http | v2-grpc
    address: str,  # host:port of the HTTP or gRPC server
    data_file: Path,
    concurrency: int,
    min_requests: int = 50,
    trials: int = 3,
    prefix: Sequence[str] = (),
    timeout_s: float = 300,
) -> LoadResult:
    command = find()
    if command is None:
        raise RuntimeError(INSTALL_HINT)
    args = [
        *prefix,
        *command,
        "-m",
        model,
        "-i",
        "grpc" if protocol == "v2-grpc" else "http",
        "-u",
        address,
        "--input-data",
        str(data_file),
        "--concurrency-range",
        str(concurrency),
        # Count windows adapt to the latency: a time window shorter than one request at high
        # concurrency never stabilises.
        "--measurement-mode",
        "count_windows",
        "--measurement-request-count",
        str(max(min_requests, 2 * concurrency)),
        # This host is shared and noisy: do not wait for stability, stop after a few windows.
        "--stability-percentage",
        "999",
        "--max-trials",
        str(max(3, trials)),  # it needs three windows to call any measurement stable
        "-f",
        "/dev/stdout",
    ]
    before = children_cpu_s()
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s)
    cpu = children_cpu_s() - before
    if done.returncode != 0:
        raise RuntimeError(f"perf_analyzer failed ({done.returncode}): {(done.stderr or done.stdout)[-2000:]}")
    row = parse_csv(done.stdout)
    micro = 1e-6
    throughput = float(row["Inferences/Second"])
    duration = float("nan")
    latency = LatencySummary(
        count=int(_request_count(done.stdout) or throughput * duration),
        mean_s=_avg_latency_us(done.stdout) * micro,
        p50_s=float(row["p50 latency"]) * micro,
        p90_s=float(row["p90 latency"]) * micro,
        p99_s=float(row["p99 latency"]) * micro,
        max_s=float("nan"),
    )
    return LoadResult(
        protocol=protocol,
        mode="closed",
        client="perf_analyzer",
        concurrency=concurrency,
        offered_rate=None,
        # perf_analyzer reports the rate of its last windows; duration and count are what it measured.
        duration_s=latency.count / throughput if throughput else duration,
        requests=latency.count,
        errors=_errors(done.stdout + done.stderr),
        latency=latency,
        # Its whole run (start and every trial): an upper bound of its cost over the measured time.
        client_cpu_s=cpu,
        extra={"server_stats": _server_line(done.stdout)},
    )


def parse_csv(stdout: str) -> dict[str, str]:
    lines = stdout.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Concurrency,") or line.startswith("Request Rate,"):
            rows = list(csv.DictReader(io.StringIO("\n".join(lines[i : i + 2]))))
            if rows:
                return rows[0]
    raise RuntimeError(f"no CSV in perf_analyzer's output:\n{stdout[-2000:]}")


def _number_after(stdout: str, label: str) -> float | None:
    for line in stdout.splitlines():
        text = line.strip()
        if text.startswith(label):
            try:
                return float(text[len(label) :].strip().split()[0])
            except (ValueError, IndexError):
                return None
    return None


def _request_count(stdout: str) -> float | None:
    return _number_after(stdout, "Request count:")


def _avg_latency_us(stdout: str) -> float:
    return _number_after(stdout, "Avg latency:") or float("nan")


def _errors(output: str) -> int:
    """Failed requests when perf_analyzer reports them (it stops on most errors)."""
    for line in output.splitlines():
        text = line.strip().lower()
        if text.startswith("failed request count:") or text.startswith("error count:"):
            try:
                return int(float(text.split(":", 1)[1].split()[0]))
            except (ValueError, IndexError):
                return 0
    return 0


def _server_line(stdout: str) -> str:
    for line in stdout.splitlines():
        if "Avg request latency" in line:
            return line.strip()
    return ""


def write_input_data(path: Path, bodies: Sequence[dict[str, Any]], task: str) -> Path:
    path.write_text(json.dumps(input_data(bodies, task), indent=1) + "\n")
    return path


def write_checked_in_inputs(directory: Path) -> list[Path]:
    """perf_analyzer inputs from the bench's generated sets: mixed_classify.json (200 texts of
    8-128 tokens, also for tag and discriminate models) and long_qa.json (16 questions over
    contexts of 300-1,500 tokens)."""
    from loadtests import data

    tokenizer = data.bert_tokenizer()
    texts = data.mixed_texts(tokenizer, 200)
    pairs = data.qa_pairs(tokenizer, 16)
    directory.mkdir(parents=True, exist_ok=True)
    return [
        write_input_data(directory / "mixed_classify.json", [{"inputs": t} for t in texts], "classify"),
        write_input_data(
            directory / "long_qa.json",
            [{"inputs": {"question": p.question, "context": p.context}} for p in pairs],
            "qa",
        ),
    ]


if __name__ == "__main__":
    import sys

    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "perf_analyzer"
    for written in write_checked_in_inputs(target):
        print(written)
