"""The model owner's own ceiling: `python -m loadtests.owner` (or `loadtests/bench --owner`).

With `--workers N` every request crosses to one model owner per device, which batches for all
workers: one process, one event loop, whatever the number of workers. This bench talks to that
owner directly over its socket, as an API worker does (the same messages, `server/workers/wire.py`),
so that nothing else is in the way: K requests in flight, M requests to a message (an API worker
sends what one turn of its event loop gathered: one or two requests a message under unary gRPC,
tens under REST at load), on the simulated runtime. Two cost models: the default one (a GPU at
about 8,000 sequences of 128 tokens a second) and a fast one under which the owner itself is the
limit. Each point reports requests a second, the owner's CPU and from them the requests one owner
core takes: the number that says whether one owner can keep a GPU fed.

The load generator is one Python process on the same host; it sends from one thread without
waiting on the owner's answers except to keep K in flight.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from tokenizers import Tokenizer

from loadtests import data, frontend
from loadtests.procstat import cpu_seconds, tree_pids
from loadtests.servers import ServerProcess
from server.core.rows import Row
from server.workers import messages as m
from server.workers import wire
from server.workers.wire import OWNER_ENV

RESULTS = Path(__file__).resolve().parent / "results"
COST_MODELS = {
    "gpu": [],  # the simulated runtime's defaults
    "fast": ["--sim-batch-ms", "0.2", "--sim-token-us", "0.05"],  # leaves the owner as the limit
}
IDENTITY = b"owner-bench"


@dataclass
class Point:
    cost: str
    per_message: int
    round: int
    requests_per_s: float
    owner_cores: float
    errors: int
    inflight: int

    @property
    def owner_us_per_request(self) -> float:
        return 1e6 * self.owner_cores / self.requests_per_s if self.requests_per_s else 0.0

    @property
    def per_owner_core(self) -> float:
        return self.requests_per_s / self.owner_cores if self.owner_cores > 0 else 0.0


@dataclass
class Report:
    points: list[Point] = field(default_factory=list)
    conditions: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> list[dict[str, Any]]:
        """Per (cost model, requests a message): medians over rounds."""
        out = []
        for cost, per_message in sorted({(p.cost, p.per_message) for p in self.points}):
            chosen = [p for p in self.points if p.cost == cost and p.per_message == per_message]
            out.append({
                "cost": cost,
                "per_message": per_message,
                "requests_per_s": statistics.median(p.requests_per_s for p in chosen),
                "owner_cores": statistics.median(p.owner_cores for p in chosen),
                "owner_us_per_request": statistics.median(p.owner_us_per_request for p in chosen),
                "per_owner_core": statistics.median(p.per_owner_core for p in chosen),
                "errors": sum(p.errors for p in chosen),
                "rounds": len(chosen),
            })  # fmt: skip
        return out


def owner_address(server: ServerProcess, timeout_s: float = 30.0) -> str:
    """The owner's socket, from an API worker's environment (where the supervisor put it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for pid in tree_pids(server.pid)[1:]:
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            for item in environ:
                if item.startswith(OWNER_ENV.encode() + b"="):
                    return item.split(b"=", 1)[1].decode()
        time.sleep(0.2)
    raise RuntimeError("no API worker of the server says where its model owner is (run it with --workers 2 or more)")


class OwnerLoad:
    """One DEALER socket to the owner, sending requests as a worker would."""

    def __init__(self, address: str, model: str, rows: list[Row]) -> None:
        self.socket = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.setsockopt(zmq.IDENTITY, IDENTITY)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(address)
        self.model, self.rows = model, rows
        self.version = ""
        self.next_id, self.next_row = 1, 0
        self.outstanding: set[int] = set()

    def close(self) -> None:
        self.socket.close(0)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Until the owner's table shows the model loaded (the first message makes the owner list us)."""
        self.socket.send_multipart(wire.message_frames(m.Hello()))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = self._receive(timeout_s=1.0)
            if got is None or not isinstance(got[0], m.Table):
                continue
            entry = got[0].models.get(self.model)
            versions = entry.versions if entry else {}
            ready = [v for v, info in versions.items() if info.ready and not info.retiring]
            if ready:
                self.version = max(ready, key=int)
                return
        raise RuntimeError(f"the owner did not report model {self.model!r} ready within {timeout_s:.0f}s")

    def _receive(self, timeout_s: float) -> tuple[m.ToWorker, list[Any]] | None:
        if not self.socket.poll(int(timeout_s * 1000), zmq.POLLIN):
            return None
        frames = self.socket.recv_multipart(copy=False)
        head = m.decode_to_worker(wire.buffer(frames[0]))
        if isinstance(head, m.StatsQuery):  # the owner sums statistics over everyone it knows
            self.socket.send_multipart(wire.message_frames(m.StatsReply(head.query, [])))
        return head, frames[1:]

    def _send(self, count: int) -> None:
        requests, rows = [], []
        for _ in range(count):
            request_id, self.next_id = self.next_id, self.next_id + 1
            requests.append(m.SubmittedRequest(request_id, self.model, self.version, None, 1))
            rows.append([self.rows[self.next_row % len(self.rows)]])
            self.next_row += 1
            self.outstanding.add(request_id)
        self.socket.send_multipart(wire.message_frames(m.Submit(requests), *wire.pack_rows(rows)), copy=False)

    def _answers(self, timeout_s: float) -> tuple[int, int]:
        """(answered, of which errors) in the next message, (0, 0) if none came or it answers nothing.
        An answer to a request that is not outstanding (twice, or never sent) is an error."""
        got = self._receive(timeout_s)
        if got is None:
            return 0, 0
        head, _ = got
        if isinstance(head, m.Results):
            ids, errors = [r.id for r in head.results], 0
        elif isinstance(head, m.Errors):
            ids = [e.id for e in head.errors]
            errors = len(ids)
        else:
            return 0, 0
        for request_id in ids:
            if request_id not in self.outstanding:
                raise RuntimeError(f"the owner answered request {request_id}, which is not outstanding")
            self.outstanding.discard(request_id)
        return len(ids), errors

    def run(
        self, *, inflight: int, per_message: int, duration_s: float, answer_timeout_s: float = 30.0
    ) -> tuple[int, int, float]:
        """(answered, errors, seconds): a closed loop of `inflight` requests in messages of `per_message`."""
        answered = errors = 0
        started = last_answer = time.monotonic()
        while (now := time.monotonic()) - started < duration_s:
            while len(self.outstanding) + per_message <= inflight:
                self._send(per_message)
            got, failed = self._answers(timeout_s=0.5)
            if got:
                answered, errors, last_answer = answered + got, errors + failed, now
            elif now - last_answer > answer_timeout_s:
                raise RuntimeError(f"the owner answered nothing for {answer_timeout_s:.0f}s")
        return answered, errors, time.monotonic() - started

    def drain(self, timeout_s: float = 30.0) -> None:
        """Every outstanding request answered (nothing may be lost between points)."""
        deadline = time.monotonic() + timeout_s
        while self.outstanding and time.monotonic() < deadline:
            self._answers(timeout_s=0.5)
        if self.outstanding:
            raise RuntimeError(f"{len(self.outstanding)} requests were never answered by the owner")


def tokenized_rows(repository: Path, model: str, count: int = 2000) -> list[Row]:
    tokenizer = Tokenizer.from_file(str(repository / model / "tokenizer.json"))
    rows = []
    for text in data.mixed_texts(tokenizer, count):
        encoding = tokenizer.encode(text)
        rows.append(Row(np.asarray(encoding.ids, dtype=np.int64), np.asarray(encoding.type_ids, dtype=np.int64)))
    return rows


def measure(args: argparse.Namespace, repository: Path, rows: list[Row], scratch: Path) -> Report:
    report = Report(conditions={
        "runtime": "simulated", "cost_models": COST_MODELS, "inflight": args.inflight,
        "per_message": args.per_message, "duration_s": args.duration, "rounds": args.rounds,
        "texts": "mixed set, one text per request", "model": args.model,
    })  # fmt: skip
    for round_no in range(args.rounds):
        for cost in args.costs:
            (scratch / cost).mkdir(exist_ok=True)  # each cost model's server log of its own
            # Two workers: with one, the server runs in a single process and has no owner to drive.
            with frontend.start(repository, args.model, 2, scratch / cost, COST_MODELS[cost]) as server:
                load = OwnerLoad(owner_address(server), args.model, rows)
                try:
                    load.wait_ready()
                    load.run(inflight=args.inflight, per_message=1, duration_s=1.0)  # warm-up
                    load.drain()
                    for per_message in args.per_message:
                        before, started = cpu_seconds(server.pid), time.monotonic()
                        answered, errors, seconds = load.run(inflight=args.inflight, per_message=per_message,
                                                             duration_s=args.duration)  # fmt: skip
                        owner = (cpu_seconds(server.pid) - before) / (time.monotonic() - started)
                        load.drain()
                        point = Point(cost, per_message, round_no, answered / seconds, owner, errors, args.inflight)
                        report.points.append(point)
                        print(f"round {round_no} {cost} {per_message}/message: {point.requests_per_s:.0f} req/s, "
                              f"owner {owner:.2f} cores ({point.owner_us_per_request:.0f} us a request), "
                              f"errors {errors}", flush=True)  # fmt: skip
                finally:
                    load.close()
    return report


def render(result: dict[str, Any]) -> str:
    lines = [
        "# The model owner alone (simulated runtime)",
        "",
        f"Conditions: {json.dumps(result['conditions'])}",
        "",
        "Medians over rounds. Requests a second per owner core: the owner's ceiling on one core.",
        "",
        "| cost model | requests a message | req/s | owner cores | owner us a request | req/s per owner core "
        "| errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in result["summary"]:
        lines.append(
            f"| {s['cost']} | {s['per_message']} | {s['requests_per_s']:.0f} | {s['owner_cores']:.2f} "
            f"| {s['owner_us_per_request']:.0f} | {s['per_owner_core']:.0f} | {s['errors']} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=None, help="model repository (default: the demo one)")
    parser.add_argument("--model", default="demo-classify")
    parser.add_argument("--costs", default="gpu,fast", help=f"comma list of {', '.join(COST_MODELS)}")
    parser.add_argument("--per-message", default="1,8", help="comma list: requests in each message")
    parser.add_argument("--inflight", type=int, default=512, help="requests in flight (a closed loop)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per point")
    parser.add_argument("--out", type=Path, default=RESULTS / "owner.json")
    args = parser.parse_args(argv)
    args.costs = [c for c in args.costs.split(",") if c]
    unknown = [c for c in args.costs if c not in COST_MODELS]
    if unknown:
        parser.error(f"unknown cost model(s) {unknown}: choose from {sorted(COST_MODELS)}")
    args.per_message = [int(n) for n in args.per_message.split(",") if n]
    if any(n < 1 or n > args.inflight for n in args.per_message):
        parser.error("--per-message values must be within 1..--inflight")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    repository = args.repository
    if repository is None:
        from server.demo_repository import ensure_demo_repository

        repository = ensure_demo_repository()
    rows = tokenized_rows(repository, args.model)
    with tempfile.TemporaryDirectory(prefix="owner-bench-") as scratch:
        report = measure(args, repository, rows, Path(scratch))
    points = [asdict(p) | {"owner_us_per_request": p.owner_us_per_request} for p in report.points]
    result = {"conditions": report.conditions, "summary": report.summary(), "points": points}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(render(result) + "\n")
    print(render(result))
    return 1 if any(p.errors for p in report.points) else 0


if __name__ == "__main__":
    raise SystemExit(main())
