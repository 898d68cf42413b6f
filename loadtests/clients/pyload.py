"""The Python load generator: closed loop or open loop (Poisson), over REST (aiohttp on asyncio,
uvloop when installed) or the typed gRPC API (`electra.v1`): grpc.aio, except closed-loop unary
calls, which run on grpc's synchronous API with completion callbacks (no event loop: cheaper).

Run as a child process by the bench so its CPU is measured on its own:

    python -m loadtests.clients.pyload --target grpc --address 127.0.0.1:8001 --task classify \
        --bodies bodies.jsonl --mode open --rate 50 --duration 10 --out result.json

Bodies are the REST JSON bodies, one a line (`{"model"?, "inputs", "parameters"?}`); for gRPC they
are turned into the typed request of the task, serialized once up front, and sent as unary calls
(`--grpc-call unary`) or as messages of one bidirectional `Stream` per channel (`--grpc-call
stream`). The client shares the host with the server, so its CPU per request is kept small: bytes
in and out, no per-call protobuf work but the stream's response id and status, and the server's
stage timings read on a sample of the calls. Open-loop latency is counted from each request's
scheduled time, so a late client cannot hide queueing (no coordinated omission); the lag between
schedule and send is reported to show whether the client kept up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import threading
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


def stage_summary() -> dict[str, dict[str, float]]:
    return {name: {"p50": percentile(v, 50), "p99": percentile(v, 99), "n": len(v)} for name, v in stages.items() if v}


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


SERVICE = "electra.v1.ElectraService"
# The StreamRequest / StreamResponse field of each typed method.
STREAM_FIELDS = {
    "Classify": "classify",
    "AnswerQuestion": "answer_question",
    "Tag": "tag",
    "Discriminate": "discriminate",
}
# Server stage timings are read on one call in this many: enough for their p50/p99, and the
# client's CPU per call is what competes with the server on a small host.
STAGE_SAMPLE = 16
_GRPC_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


def _open_channels(address: str, channels: int, *, aio: bool = True) -> list[Any]:
    import grpc

    insecure_channel = grpc.aio.insecure_channel if aio else grpc.insecure_channel
    # Several channels: one HTTP/2 connection serialises its frames; more spread the work.
    return [insecure_channel(address, options=[*_GRPC_OPTIONS, ("grpc.channel_id", k)]) for k in range(channels)]


async def grpc_sender(
    address: str, task: str, bodies: list[bytes], timeout_s: float, channels: int = 1, call: str = "unary"
) -> tuple[Sender, Callable[[], Awaitable[None]]]:
    """One typed request per send, as unary calls or as messages of one bidirectional stream per
    channel. Requests are serialized once up front and the calls carry bytes: no protobuf work per
    call on the client beyond what checking the outcome needs."""
    typed = [grpc_request(task, orjson.loads(b)) for b in bodies]
    opened = _open_channels(address, channels)
    if call == "stream":
        return await _stream_sender(opened, typed, timeout_s)
    return _unary_sender(opened, typed, timeout_s)


def _unary_calls(opened: list[Any], typed: list[tuple[str, Any]]) -> tuple[list[bytes], list[Any]]:
    """The requests serialized once, and the typed method on each channel (sync or aio alike)."""
    payloads = [request.SerializeToString() for _, request in typed]
    # No (de)serializers: bytes in, bytes out. Registered like the generated stubs' methods.
    calls = [
        c.unary_unary(
            f"/{SERVICE}/{typed[0][0]}", request_serializer=None, response_deserializer=None, _registered_method=True
        )
        for c in opened
    ]
    return payloads, calls


def _unary_sender(
    opened: list[Any], typed: list[tuple[str, Any]], timeout_s: float
) -> tuple[Sender, Callable[[], Awaitable[None]]]:
    import grpc

    payloads, calls = _unary_calls(opened, typed)
    n_payloads, n_calls = len(payloads), len(calls)
    error = grpc.aio.AioRpcError
    sent = 0

    async def send(i: int) -> bool:
        nonlocal sent
        sent += 1
        sampled = sent % STAGE_SAMPLE == 0
        rpc = calls[i % n_calls](payloads[i % n_payloads], timeout=timeout_s)
        try:
            # Awaiting the call is the cheapest check of its status: it raises unless OK.
            await rpc
        except error:
            return False
        if sampled:
            _record_stages(dict(await rpc.trailing_metadata() or ()))
        return True

    async def close() -> None:
        for c in opened:
            await c.close()

    return send, close


def stream_id_field(n: int) -> bytes:
    """StreamRequest's `id` (field 1, a string) as protobuf wire bytes. Serialized messages
    concatenate into their merge, so this + a pre-serialized StreamRequest(classify=...) is the
    whole request with no protobuf work per call."""
    text = str(n).encode()
    return b"\x0a" + bytes((len(text),)) + text  # tag (1 << 3 | LEN), length (< 128), bytes


class _Stream:
    """One bidirectional `Stream` call: requests are written in order by one writer task (gRPC takes
    one write at a time per call), responses matched to their waiting sender by id."""

    def __init__(self, call: Any, timeout_s: float) -> None:
        self.call = call
        self.timeout_s = timeout_s
        # id -> (the sender's future, when it was sent)
        self.pending: dict[str, tuple[asyncio.Future[bool], float]] = {}
        self.outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.broken = False
        self.seen = 0
        self.tasks = [asyncio.ensure_future(c) for c in (self._write(), self._read(), self._expire())]

    async def _write(self) -> None:
        try:
            while (payload := await self.outbox.get()) is not None:
                await self.call.write(payload)
            await self.call.done_writing()
        except Exception:  # the stream failed: the reader sees it and fails what is pending
            self.broken = True

    async def _read(self) -> None:
        from proto.electra.v1 import electra_pb2 as pb

        parse = pb.StreamResponse.FromString
        pending = self.pending
        try:
            async for raw in self.call:
                response = parse(raw)
                waiting = pending.pop(response.id, None)
                if waiting is not None and not waiting[0].done():
                    waiting[0].set_result(response.status.code == 0)
                self.seen += 1
                if self.seen % STAGE_SAMPLE == 0 and response.status.code == 0:
                    t = response.timings
                    for name, ms in zip(
                        STAGES, (t.queue_ms, t.inference_ms, t.tokenization_ms, t.total_ms), strict=True
                    ):
                        stages[name].append(ms)
        except Exception:  # the stream itself failed (server gone): every request on it did
            pass
        finally:
            self.broken = True
            self._fail(math.inf)

    async def _expire(self) -> None:
        """The per-request timeout, checked once a second rather than with a timer per request."""
        loop = asyncio.get_running_loop()
        while not self.broken:
            await asyncio.sleep(1.0)
            self._fail(loop.time() - self.timeout_s)

    def _fail(self, sent_before: float) -> None:
        for key, (waiter, sent) in list(self.pending.items()):
            if sent < sent_before:
                del self.pending[key]
                if not waiter.done():
                    waiter.set_result(False)

    async def close(self) -> None:
        if not self.pending:  # nothing left in flight: end the stream cleanly, else just cancel it
            self.outbox.put_nowait(None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*self.tasks[:2]), timeout=2)
        self.call.cancel()
        self.broken = True
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def _stream_sender(
    opened: list[Any], typed: list[tuple[str, Any]], timeout_s: float
) -> tuple[Sender, Callable[[], Awaitable[None]]]:
    from proto.electra.v1 import electra_pb2 as pb

    field = STREAM_FIELDS[typed[0][0]]
    payloads = [pb.StreamRequest(**{field: request}).SerializeToString() for _, request in typed]
    # No deadline on the stream (it would cover all its messages): each request's timeout is
    # checked by the stream itself.
    streams = [
        _Stream(
            c.stream_stream(
                f"/{SERVICE}/Stream", request_serializer=None, response_deserializer=None, _registered_method=True
            )(),
            timeout_s,
        )
        for c in opened
    ]
    loop = asyncio.get_running_loop()
    n_payloads, n_streams = len(payloads), len(streams)
    counter = 0

    async def send(i: int) -> bool:
        nonlocal counter
        stream = streams[i % n_streams]
        if stream.broken:
            await asyncio.sleep(0)  # fail fast, but let the other clients run
            return False
        counter += 1
        waiter = loop.create_future()
        stream.pending[str(counter)] = (waiter, loop.time())
        stream.outbox.put_nowait(stream_id_field(counter) + payloads[i % n_payloads])
        return await waiter

    async def close() -> None:
        for stream in streams:
            await stream.close()
        for c in opened:
            await c.close()

    return send, close


def closed_loop_futures(
    address: str,
    task: str,
    bodies: list[bytes],
    *,
    concurrency: int,
    duration_s: float,
    offset: int,
    timeout_s: float,
    channels: int = 1,
    server_pid: int | None = None,
) -> dict[str, Any]:
    """Closed-loop unary calls on grpc's synchronous API: each client's next call is started from
    its previous call's completion callback, on grpc's own thread, with no event loop in between.
    On this 2-core host that costs 0.28 ms of client CPU a call against grpc.aio's 0.45 (side by
    side at 32 clients), CPU taken from the server it measures."""
    import grpc

    opened = _open_channels(address, channels, aio=False)
    payloads, calls = _unary_calls(opened, [grpc_request(task, orjson.loads(b)) for b in bodies])
    n_payloads, n_calls = len(payloads), len(calls)
    lock = threading.Lock()
    latencies: list[float] = []
    errors = sent = 0
    running = concurrency
    all_stopped = threading.Event()
    stop_at = math.inf

    def start(i: int) -> None:
        started = time.perf_counter()
        future = calls[i % n_calls].future(payloads[i % n_payloads], timeout=timeout_s)
        future.add_done_callback(lambda f: finish(f, i, started))

    def finish(future: Any, i: int, started: float) -> None:
        nonlocal errors, sent, running
        now = time.perf_counter()
        ok = future.code() is grpc.StatusCode.OK
        with lock:
            sent += 1
            if not ok:
                errors += 1
            else:
                latencies.append(now - started)
                if sent % STAGE_SAMPLE == 0:
                    _record_stages(dict(future.trailing_metadata() or ()))
        if now < stop_at:
            start(i + 1)
            return
        with lock:
            running -= 1
            if running == 0:
                all_stopped.set()

    try:
        # One call first: the connection opens and the first call's setup is not measured.
        with contextlib.suppress(grpc.RpcError):
            calls[0](payloads[offset % n_payloads], timeout=timeout_s)
        cpu0 = time.process_time()
        meter = _Meter(server_pid)
        begun = time.perf_counter()
        stop_at = begun + duration_s
        for k in range(concurrency):
            start(offset + k * 7919)
        all_stopped.wait(duration_s + timeout_s + 5)
        result: dict[str, Any] = {
            "latencies": latencies,
            "errors": errors + running,  # calls still out after the timeout count as failed
            "duration_s": time.perf_counter() - begun,
            "client_cpu_s": time.process_time() - cpu0,
        }
        result.update(meter.stop())
        return result
    finally:
        for channel in opened:
            channel.close()


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
        from loadtests.procstat import machine_busy_seconds, tree_cpu_seconds

        self._pid = server_pid
        self._cpu = tree_cpu_seconds  # the server's worker processes too (--workers)
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
        send, close = await grpc_sender(args.address, args.task, bodies, args.timeout, args.channels, args.grpc_call)
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
        result["stages_ms"] = stage_summary()
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
    parser.add_argument(
        "--grpc-call",
        choices=("unary", "stream"),
        default="unary",
        help="typed gRPC: one unary call per request, or one bidirectional Stream per channel carrying them all",
    )
    parser.add_argument("--server-pid", type=int, help="measure this process's CPU over the load phase")
    parser.add_argument("--out", type=Path, help="write the JSON result here (default: stdout)")
    args = parser.parse_args(argv)
    if args.target == "grpc" and args.mode == "closed" and args.grpc_call == "unary":
        result = closed_loop_futures(
            args.address,
            args.task,
            read_bodies(args.bodies),
            concurrency=args.concurrency,
            duration_s=args.duration,
            offset=args.offset,
            timeout_s=args.timeout,
            channels=args.channels,
            server_pid=args.server_pid,
        )
        result["stages_ms"] = stage_summary()
    else:
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
