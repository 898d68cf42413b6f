"""The front end's own ceiling, with no GPU: `python -m loadtests.frontend` (or `loadtests/bench
--frontend`).

The server runs `--runtime simulated` (a GPU's cost model, correctly shaped outputs, no CPU) so that
everything measured is the front end: HTTP or gRPC, tokenization, batching, IPC, decoding. Single-
text requests (the usual case for classify from other services) at a closed loop of many clients,
one worker against N, alternately in rounds on the same host, medians. Per protocol: REST (wrk),
KServe v2 over HTTP and gRPC (perf_analyzer, when installed), typed gRPC (the Python client, which
takes CPU from the server on a small host). Each figure comes with the server's CPU (the whole
process tree: owner and workers) and the split between owner and workers, so that requests per
server CPU-second, and from it the cores a GPU host needs to keep a GPU fed at a given rate, are
measured, not guessed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from tokenizers import Tokenizer

from loadtests import data
from loadtests.clients import perf_analyzer as pa
from loadtests.clients import wrk
from loadtests.procstat import CpuMeter, cpu_seconds
from loadtests.servers import ServerProcess, electra_server

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_RATE = 8000.0  # seq/s an H200 runs ELECTRA-large fp16 at in the GPU target


@dataclass
class Point:
    workers: int
    protocol: str
    round: int
    requests_per_s: float
    errors: int
    server_cores: float
    client_cores: float
    other_cores: float
    owner_cores: float
    p50_ms: float
    p99_ms: float
    connections: int = 0

    @property
    def per_core(self) -> float:
        return self.requests_per_s / self.server_cores if self.server_cores > 0 else 0.0


@dataclass
class Report:
    points: list[Point] = field(default_factory=list)
    conditions: dict[str, Any] = field(default_factory=dict)

    def median(self, workers: int, protocol: str, attr: str, connections: int | None = None) -> float | None:
        values = [getattr(p, attr) for p in self._at(workers, protocol, connections)]
        return statistics.median(values) if values else None

    def _at(self, workers: int, protocol: str, connections: int | None = None) -> list[Point]:
        return [p for p in self.points if p.workers == workers and p.protocol == protocol
                and (connections is None or p.connections == connections)]  # fmt: skip

    def best_connections(self, workers: int, protocol: str) -> int | None:
        """The client count at which this server did most (median over rounds): a closed loop
        measures capacity only where the server is saturated, and more workers need more clients
        in flight to be (each request's latency includes the hop to the owner)."""
        counts = sorted({p.connections for p in self._at(workers, protocol)})
        if not counts:
            return None
        return max(counts, key=lambda c: self.median(workers, protocol, "requests_per_s", c) or 0.0)

    def summary(self, baseline: int, scaled: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        protocols = sorted({p.protocol for p in self.points})
        for protocol in protocols:
            c_one, c_many = self.best_connections(baseline, protocol), self.best_connections(scaled, protocol)
            one = self.median(baseline, protocol, "requests_per_s", c_one)
            many = self.median(scaled, protocol, "requests_per_s", c_many)
            chosen = self._at(scaled, protocol, c_many)
            out[protocol] = {
                f"workers_{baseline}_rps": one,
                f"workers_{scaled}_rps": many,
                f"workers_{baseline}_connections": c_one,
                f"workers_{scaled}_connections": c_many,
                "ratio": many / one if one and many else None,
                "rps_per_server_core": self.median(scaled, protocol, "per_core", c_many),
                "rps_per_worker_core": _worker_per_core(chosen),
                # The API workers' CPU per request sets how many cores a GPU host needs; the owner
                # adds its own (it does not grow with the workers' parsing).
                "cores_for_target": _cores_for(chosen),
            }
        return out


def _worker_per_core(points: list[Point]) -> float | None:
    values = [p.requests_per_s / (p.server_cores - p.owner_cores) for p in points if p.server_cores - p.owner_cores > 0]
    return statistics.median(values) if values else None


def _cores_for(points: list[Point]) -> float | None:
    chosen = [p for p in points if p.requests_per_s > 0]
    if not chosen:
        return None
    worker_s = statistics.median((p.server_cores - p.owner_cores) / p.requests_per_s for p in chosen)
    owner_s = statistics.median(p.owner_cores / p.requests_per_s for p in chosen)
    return TARGET_RATE * (worker_s + owner_s)


def owner_cpu(server: ServerProcess) -> float:
    """The top process (the model owner with --workers > 1, the whole server with 1)."""
    return cpu_seconds(server.pid)


def measure(
    server: ServerProcess, workers: int, protocol: str, round_no: int, bodies: Path, bodies_list: list[dict[str, Any]],
    args: argparse.Namespace, scratch: Path, connections: int,
) -> Point | None:  # fmt: skip
    meter = CpuMeter(server.pid, tree=True)
    owner0 = owner_cpu(server) if workers > 1 else 0.0
    meter.start()
    if protocol == "rest":
        result = wrk.run(f"{server.url}/v1/classify", bodies, concurrency=connections,
                         duration_s=args.duration, threads=args.wrk_threads)  # fmt: skip
        rps, errors = result.requests / result.duration_s, result.errors
        p50, p99, client_cpu = result.latency.p50_s * 1e3, result.latency.p99_s * 1e3, result.client_cpu_s
    elif protocol.startswith("v2-"):
        if not pa.find():
            return None
        transport = protocol.removeprefix("v2-")
        url = f"127.0.0.1:{server.grpc_port if transport == 'grpc' else server.http_port}"
        pa_file = pa.write_input_data(scratch / "pa-classify.json", bodies_list, "classify")
        result = pa.run(model=args.model, protocol=protocol, address=url, data_file=pa_file,
                        concurrency=connections, min_requests=int(args.duration * 200))  # fmt: skip
        rps, errors = result.requests / result.duration_s, result.errors
        p50, p99, client_cpu = result.latency.p50_s * 1e3, result.latency.p99_s * 1e3, result.client_cpu_s
    else:
        from loadtests.clients.pyload import closed_loop_futures

        raw = [orjson.dumps(b) for b in bodies_list]
        assert server.grpc_port is not None
        out = closed_loop_futures(f"127.0.0.1:{server.grpc_port}", "classify", raw, concurrency=connections,
                                  duration_s=args.duration, offset=0, timeout_s=30,
                                  channels=args.grpc_channels)  # fmt: skip
        latencies = sorted(out["latencies"])
        rps, errors = len(latencies) / out["duration_s"], out["errors"]
        p50 = latencies[len(latencies) // 2] * 1e3 if latencies else 0.0
        p99 = latencies[int(len(latencies) * 0.99)] * 1e3 if latencies else 0.0
        client_cpu = out["client_cpu_s"]
    use = meter.stop(client_cpu)
    owner = (owner_cpu(server) - owner0) / use.wall_s if workers > 1 else 0.0
    return Point(workers, protocol, round_no, rps, int(errors), use.server_cores, use.client_cores, use.other_cores,
                 owner, p50, p99, connections)  # fmt: skip


def start(repository: Path, model: str, workers: int, log_dir: Path, extra: list[str]) -> ServerProcess:
    server = electra_server(
        repository, models=[model], log_path=log_dir / f"server-w{workers}.log",
        extra_args=["--runtime", "simulated", "--workers", str(workers), *extra],
    )  # fmt: skip
    return server.start()  # with --workers, a process group: none of its workers may outlive it


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=None, help="model repository (default: the demo one)")
    parser.add_argument("--model", default="demo-classify")
    parser.add_argument("--workers", default="1,2", help="comma list; the first is the baseline")
    parser.add_argument("--protocols", default="rest,v2-http,v2-grpc,grpc")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per load point")
    parser.add_argument(
        "--connections",
        default="64,256",
        help="comma list of closed-loop clients; each server is credited with its best (where it is saturated)",
    )
    parser.add_argument(
        "--grpc-channels",
        type=int,
        default=16,
        help="typed gRPC client channels: SO_REUSEPORT spreads connections, not calls, over the workers",
    )
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--server-arg", action="append", default=[], help="any further server flag")
    parser.add_argument("--out", type=Path, default=RESULTS / "frontend.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.repository is None:
        from server.demo_repository import ensure_demo_repository

        args.repository = ensure_demo_repository()
    tokenizer = Tokenizer.from_file(str(args.repository / args.model / "tokenizer.json"))
    texts = data.mixed_texts(tokenizer, 2000)
    bodies_list = [{"model": args.model, "inputs": t} for t in texts]
    worker_counts = [int(w) for w in args.workers.split(",")]
    protocols = [p for p in args.protocols.split(",") if p]
    client_counts = [int(c) for c in args.connections.split(",")]
    report = Report(conditions={
        "runtime": "simulated", "texts": "mixed set, one text per request", "connections": client_counts,
        "grpc_channels": args.grpc_channels,
        "duration_s": args.duration, "rounds": args.rounds, "workers": worker_counts, "host_cores": _cores(),
    })  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="frontend-") as scratch_dir:
        scratch = Path(scratch_dir)
        bodies = scratch / "bodies.jsonl"
        bodies.write_bytes(b"\n".join(orjson.dumps(b) for b in bodies_list) + b"\n")
        for round_no in range(args.rounds):
            for workers in worker_counts if round_no % 2 == 0 else reversed(worker_counts):
                with start(args.repository, args.model, workers, scratch, args.server_arg) as server:
                    wrk.run(f"{server.url}/v1/classify", bodies, concurrency=client_counts[0], duration_s=2)  # warm-up
                    for protocol, connections in ((p, c) for p in protocols for c in client_counts):
                        point = measure(server, workers, protocol, round_no, bodies, bodies_list, args, scratch,
                                        connections)  # fmt: skip
                        if point is None:
                            continue
                        report.points.append(point)
                        print(f"round {round_no} workers {workers} {protocol} @{connections}: "
                              f"{point.requests_per_s:.0f} req/s, "
                              f"server {point.server_cores:.2f} cores (owner {point.owner_cores:.2f}), "
                              f"client {point.client_cores:.2f}, other {point.other_cores:.2f}, "
                              f"p50 {point.p50_ms:.1f} ms, errors {point.errors}", flush=True)  # fmt: skip
    summary = report.summary(worker_counts[0], worker_counts[-1])
    result = {"conditions": report.conditions, "points": [asdict(p) | {"per_core": p.per_core} for p in report.points],
              "summary": summary, "target_rate": TARGET_RATE}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(render(result))
    args.out.with_suffix(".md").write_text(render(result) + "\n")
    return 0


def render(result: dict[str, Any]) -> str:
    lines = [
        "# Front end with the simulated runtime",
        "",
        f"Conditions: {json.dumps(result['conditions'])}",
        "",
        "Each server's figure is the median over rounds at the client count where it did most (@N).",
        "",
        "| protocol | 1 worker req/s | N workers req/s | ratio | req/s per server core | req/s per worker core "
        f"| cores for {result['target_rate']:.0f} seq/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for protocol, s in result["summary"].items():
        keys = [k for k in s if k.startswith("workers_") and k.endswith("_rps")]
        one, many = s[keys[0]], s[keys[1]] if len(keys) > 1 else None
        at = [s.get(k.removesuffix("_rps") + "_connections") for k in keys]
        lines.append(
            f"| {protocol} | {_f(one)}{_at(at[0])} | {_f(many)}{_at(at[-1])} | {_f(s['ratio'], 2)}x "
            f"| {_f(s['rps_per_server_core'])} | {_f(s['rps_per_worker_core'])} | {_f(s['cores_for_target'], 1)} |"
        )
    return "\n".join(lines)


def _at(connections: int | None) -> str:
    return f" @{connections}" if connections else ""


def _f(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _cores() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main())
