"""The Python load generator: asyncio (uvloop when installed), closed loop or open loop (Poisson),
over REST (aiohttp) or the typed gRPC API (`electra.v1`, grpc.aio).

Run as a child process by the bench so its CPU is measured on its own:

    python -m loadtests.clients.pyload --target grpc --address 127.0.0.1:8001 --task classify \
        --bodies bodies.jsonl --mode open --rate 50 --duration 10 --out result.json

Bodies are the REST JSON bodies, one a line (`{"model"?, "inputs", "parameters"?}`); for gRPC they
are turned into the typed request of the task. Open-loop latency is counted from each request's
scheduled time, so a late client cannot hide queueing (no coordinated omission); the lag between
schedule and send is reported to show whether the client kept up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from loadtests.schedule import poisson_arrivals
from loadtests.stats import percentile

Sender = Callable[[int], Awaitable[bool]]  # body index -> success


def read_bodies(path: Path) -> list[bytes]:
    return [line for line in Path(path).read_bytes().splitlines() if line.strip()]


# ---------------------------------------------------------------- protocols


async def http_sender(url: str, bodies: list[bytes], timeout_s: float) -> tuple[Sender, Callable[[], Awaitable[None]]]:
    import aiohttp

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=False),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        headers={"Content-Type": "application/json"},
    )

    async def send(i: int) -> bool:
        async with session.post(url, data=bodies[i % len(bodies)]) as response:
            await response.read()
            if response.status != 200:
                return False
            _record_stages(response.headers)
            return True

    return send, session.close


# Per-request server stages (ms) from the timing headers / trailing metadata: where the time went.
STAGES = ("x-queue-time", "x-inference-time", "x-tokenization-time", "x-total-time")
stages: dict[str, list[float]] = {name: [] for name in STAGES}


def _record_stages(headers: Any) -> None:
    for name in STAGES:
        raw = headers.get(name)
        if raw is not None:
            with contextlib.suppress(ValueError):
                stages[name].append(float(raw))


def grpc_request(task: str, body: dict[str, Any]) -> tuple[str, Any]:
    """(method name, typed request) for a REST body."""
    from proto.electra.v1 import electra_pb2 as pb

    inputs = body["inputs"]
    many = inputs if isinstance(inputs, list) else [inputs]
    model = body.get("model") or ""
    if task == "classify":
        items = [
            pb.ClassifyInput(text=i)
            if isinstance(i, str)
            else pb.ClassifyInput(text=i["text"], text_pair=i.get("text_pair"))
            for i in many
        ]
        return "Classify", pb.ClassifyRequest(model=model, inputs=items)
    if task == "qa":
        items = [pb.QaInput(question=i["question"], context=i["context"]) for i in many]
        return "AnswerQuestion", pb.AnswerQuestionRequest(model=model, inputs=items)
    if task == "tag":
        return "Tag", pb.TagRequest(model=model, inputs=many)
    if task == "discriminate":
        return "Discriminate", pb.DiscriminateRequest(model=model, inputs=many)
    raise ValueError(f"unknown task {task!r}")


async def grpc_sender(
    address: str, task: str, bodies: list[bytes], timeout_s: float, channels: int = 1
) -> tuple[Sender, Callable[[], Awaitable[None]]]:
    import grpc

    from proto.electra.v1 import electra_pb2_grpc

    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    # Several channels: one HTTP/2 connection serialises its frames; more spread the work.
    opened = [grpc.aio.insecure_channel(address, options=[*options, ("grpc.channel_id", k)]) for k in range(channels)]
    stubs = [electra_pb2_grpc.ElectraServiceStub(c) for c in opened]
    requests = [grpc_request(task, orjson.loads(b)) for b in bodies]

    async def send(i: int) -> bool:
        method, request = requests[i % len(requests)]
        stub = stubs[i % len(stubs)]
        try:
            call = getattr(stub, method)(request, timeout=timeout_s)
            await call
            _record_stages(dict(await call.trailing_metadata() or ()))
        except grpc.aio.AioRpcError:
            return False
        return True

    async def close() -> None:
        for c in opened:
            await c.close()

    return send, close


# ---------------------------------------------------------------- loops


async def closed_loop(send: Sender, concurrency: int, duration_s: float, n_bodies: int, offset: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + duration_s

    async def client(k: int) -> None:
        nonlocal errors
        i = offset + k * 7919
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            try:
                ok = await send(i)
            except Exception:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1
            i += 1

    started = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(concurrency)))
    return {"latencies": latencies, "errors": errors, "duration_s": time.perf_counter() - started}


async def open_loop(
    send: Sender, rate: float, duration_s: float, seed: int, offset: int, drain_s: float
) -> dict[str, Any]:
    schedule = poisson_arrivals(rate, duration_s, seed)
    latencies: list[float] = []
    lags: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()

    async def one(i: int, due: float) -> None:
        nonlocal errors
        try:
            ok = await send(offset + i)
        except Exception:
            ok = False
        if ok:
            latencies.append(loop.time() - due)
        else:
            errors += 1

    tasks = []
    start = loop.time() + 0.05
    for i, at in enumerate(schedule):
        due = start + float(at)
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        lags.append(max(0.0, loop.time() - due))
        tasks.append(asyncio.ensure_future(one(i, due)))
    # Bounded: whatever is still out after the drain time is counted as an error.
    _done, pending = await asyncio.wait(tasks, timeout=drain_s) if tasks else (set(), set())
    for task in pending:
        task.cancel()
    with contextlib.suppress(Exception):
        await asyncio.gather(*pending, return_exceptions=True)
    errors += len(pending)
    return {
        "latencies": latencies,
        "errors": errors,
        # Throughput over the offered window: requests answered per second of schedule.
        "duration_s": duration_s,
        "offered": len(schedule),
        "lag_p50_s": percentile(lags, 50) if lags else 0.0,
        "lag_p99_s": percentile(lags, 99) if lags else 0.0,
    }


class _Meter:
    """The server's and the machine's CPU over the measured phase only (not this process's start)."""

    def __init__(self, server_pid: int | None) -> None:
        from loadtests.procstat import cpu_seconds, machine_busy_seconds

        self._pid = server_pid
        self._cpu = cpu_seconds
        self._busy = machine_busy_seconds
        self._t0 = time.monotonic()
        self._s0 = self._server()
        self._b0 = self._busy()[0]

    def _server(self) -> float:
        if not self._pid:
            return 0.0
        try:
            return self._cpu(self._pid)
        except OSError:
            return 0.0

    def stop(self) -> dict[str, float]:
        return {
            "meter_wall_s": time.monotonic() - self._t0,
            "server_cpu_s": self._server() - self._s0,
            "machine_busy_s": self._busy()[0] - self._b0,
        }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    bodies = read_bodies(args.bodies)
    if args.target == "http":
        send, close = await http_sender(args.url, bodies, args.timeout)
    else:
        send, close = await grpc_sender(args.address, args.task, bodies, args.timeout, args.channels)
    try:
        # One request first: connections open and the first call's setup is not measured.
        with contextlib.suppress(Exception):
            await send(args.offset)
        for recorded in stages.values():
            recorded.clear()
        cpu0 = time.process_time()
        meter = _Meter(args.server_pid)
        if args.mode == "closed":
            result = await closed_loop(send, args.concurrency, args.duration, len(bodies), args.offset)
        else:
            result = await open_loop(send, args.rate, args.duration, args.seed, args.offset, args.drain)
        result["client_cpu_s"] = time.process_time() - cpu0
        result.update(meter.stop())
        result["stages_ms"] = {
            name: {"p50": percentile(v, 50), "p99": percentile(v, 99), "n": len(v)} for name, v in stages.items() if v
        }
    finally:
        await close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="asyncio load generator (REST or typed gRPC)")
    parser.add_argument("--target", choices=("http", "grpc"), required=True)
    parser.add_argument("--url", help="REST endpoint URL (target http)")
    parser.add_argument("--address", help="host:port (target grpc)")
    parser.add_argument("--task", default="classify", choices=("classify", "qa", "tag", "discriminate"))
    parser.add_argument("--bodies", type=Path, required=True)
    parser.add_argument("--mode", choices=("closed", "open"), default="closed")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument(
        "--drain", type=float, default=15.0, help="open loop: longest wait for answers after the schedule"
    )
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--channels", type=int, default=1, help="gRPC channels (connections)")
    parser.add_argument("--server-pid", type=int, help="measure this process's CPU over the load phase")
    parser.add_argument("--out", type=Path, help="write the JSON result here (default: stdout)")
    args = parser.parse_args(argv)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        result = runner.run(main_async(args))
    text = json.dumps(result)
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
