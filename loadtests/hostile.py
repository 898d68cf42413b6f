"""Hostile bodies: what a refusal costs the server, on every input path.

    python -m loadtests.hostile --url http://127.0.0.1:8000 --grpc 127.0.0.1:8001 --pid PID
    python -m loadtests.hostile ... --kinds rest-tag,grpc-stream --requests 32 --text-mb 4 --json out.json

For each kind, `--requests` bodies (default 32, all at once) whose one text of `--text-mb` MB
("a a a ...": one token every two bytes, thousands of windows) is far past the window budget:
each must be refused (413 / RESOURCE_EXHAUSTED, 422 / INVALID_ARGUMENT for classify, whose text
must fit one window; 429 past the body buffer). Meanwhile a client sends short classify requests
one after the other and probes liveness. Measured for each kind: the answers, the slowest
refusal, the server tree's RSS at rest, its peak (the kernel's high-water mark of each process,
reset before the barrage) and after (once the server has been idle two seconds), and the short
requests' p99 during the barrage against their p99 at rest, measured just before it.

Used by tests/e2e/test_hostile_bodies.py (in its own process: the project's KServe stubs and
tritonclient's share message names) and to measure a server before and after a change. Only
127.0.0.1 is a target; every request has a timeout; the run ends by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson

from loadtests import procstat

MB = 1 << 20
MODELS = {"classify": "demo-classify", "qa": "demo-qa", "tag": "demo-tag", "discriminate": "demo-discriminator"}
SHORT_BODY = {"model": MODELS["classify"], "inputs": "Great film!"}
TIMEOUT_S = 120.0
# What each kind of body must get: its refusal, or the body buffer's (429 / RESOURCE_EXHAUSTED).
REFUSED_HTTP = {"413", "429"}
REFUSED_GRPC = {"RESOURCE_EXHAUSTED"}


@dataclass
class Target:
    url: str
    grpc: str

    def channel(self) -> grpc.Channel:
        size = 64 * MB
        return grpc.insecure_channel(
            self.grpc, options=[("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)]
        )


def hostile_text(text_mb: float) -> str:
    return "a " * int(text_mb * MB / 2)


# ---------------------------------------------------------------- one request of each kind


def _post(client: httpx.Client, target: Target, path: str, body: dict[str, Any]) -> str:
    response = client.post(
        target.url + path, content=orjson.dumps(body), headers={"content-type": "application/json"}, timeout=TIMEOUT_S
    )
    return str(response.status_code)


def _rest(task: str, inputs: Callable[[str], Any]) -> Callable[..., str]:
    def send(client: httpx.Client, target: Target, text: str) -> str:
        return _post(client, target, f"/v1/{task}", {"model": MODELS[task], "inputs": inputs(text)})

    return send


def _hf(client: httpx.Client, target: Target, text: str) -> str:
    return _post(client, target, f"/models/{MODELS['tag']}", {"inputs": text})


def _v2_http(client: httpx.Client, target: Target, text: str) -> str:
    tensor = {"name": "TEXT", "datatype": "BYTES", "shape": [1, 1], "data": [text]}
    return _post(client, target, f"/v2/models/{MODELS['discriminate']}/infer", {"inputs": [tensor]})


def _typed_tag(text: str) -> bytes:
    from proto.electra.v1 import electra_pb2 as pb

    return pb.TagRequest(model=MODELS["tag"], inputs=[text]).SerializeToString()


def _unary(method: str, payload: Callable[[str], bytes]) -> Callable[..., str]:
    def send(channel: grpc.Channel, target: Target, text: str) -> str:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            call(payload(text), timeout=TIMEOUT_S)
        except grpc.RpcError as error:
            return error.code().name
        return "OK"

    return send


def _v2_grpc(text: str) -> bytes:
    from proto.inference import grpc_service_pb2 as kserve

    request = kserve.ModelInferRequest(model_name=MODELS["qa"])
    for name, value in (("QUESTION", "Who?"), ("CONTEXT", text)):
        request.inputs.add(name=name, datatype="BYTES", shape=[1, 1]).contents.bytes_contents.append(value.encode())
    return request.SerializeToString()


HTTP_KINDS: dict[str, Callable[..., str]] = {
    "rest-tag": _rest("tag", lambda t: t),
    "rest-discriminate": _rest("discriminate", lambda t: [t]),
    "rest-qa": _rest("qa", lambda t: {"question": "Who?", "context": t}),
    "rest-classify": _rest("classify", lambda t: t),
    "hf-tag": _hf,
    "v2-http": _v2_http,
}
GRPC_KINDS: dict[str, Callable[..., str]] = {
    "grpc-tag": _unary("/electra.v1.ElectraService/Tag", _typed_tag),
    "v2-grpc": _unary("/inference.GRPCInferenceService/ModelInfer", _v2_grpc),
}
KINDS = [*HTTP_KINDS, *GRPC_KINDS, "grpc-stream"]


def expected(kind: str) -> set[str]:
    """The answers a hostile body of this kind may get."""
    if kind == "rest-classify":
        return {"422", "429"}
    return REFUSED_GRPC if kind.startswith(("grpc", "v2-grpc")) else REFUSED_HTTP


def _stream(target: Target, text: str, n: int) -> list[tuple[str, float]]:
    """n messages on one typed stream; each response's status."""
    from proto.electra.v1 import electra_pb2 as pb

    started = time.monotonic()
    messages = (pb.StreamRequest(id=str(i), tag=pb.TagRequest(model=MODELS["tag"], inputs=[text])) for i in range(n))
    with target.channel() as channel:
        stream = channel.stream_stream(
            "/electra.v1.ElectraService/Stream",
            request_serializer=pb.StreamRequest.SerializeToString,
            response_deserializer=pb.StreamResponse.FromString,
        )
        answers = []
        for response in stream(messages, timeout=TIMEOUT_S):
            answers.append((grpc.StatusCode.OK.name if response.status.code == 0 else _code(response.status.code),
                            time.monotonic() - started))  # fmt: skip
    return answers


def _code(value: int) -> str:
    return next((c.name for c in grpc.StatusCode if c.value[0] == value), str(value))


# ---------------------------------------------------------------- the barrage and what it measures


@dataclass
class Outcome:
    kind: str
    answers: dict[str, int]
    unexpected: int
    slowest_s: float
    rss_rest_mb: float
    rss_peak_mb: float
    rss_after_mb: float
    short_p99_rest_ms: float
    short_p99_during_ms: float
    short_errors: int
    live_failures: int
    seconds: float
    api_processes: int = 1
    notes: list[str] = field(default_factory=list)

    @property
    def short_ratio(self) -> float:
        return self.short_p99_during_ms / max(self.short_p99_rest_ms, 1e-6)


class Probe:
    """Short classify requests one after the other, and liveness, until stopped: in a process of
    its own, so that the barrage's client threads (serializing and sending megabytes under this
    process's GIL) do not slow the probe down and pass for the server's latency."""

    def __init__(self, target: Target) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop, self._ready = context.Event(), context.Event()
        self._results, child = context.Pipe(duplex=False)
        self._process = context.Process(target=_probe, args=(target.url, self._stop, self._ready, child), daemon=True)
        self.latencies: list[float] = []
        self.errors = 0
        self.live_failures = 0

    def __enter__(self) -> Probe:
        # A spawned interpreter takes about a second to start: a barrage that began before the
        # probe's first request would be measured by nothing.
        self._process.start()
        if not self._ready.wait(60):
            raise RuntimeError("the probe process did not start")
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._results.poll(60):
            self.latencies, self.errors, self.live_failures = self._results.recv()
        self._process.join(30)


def _probe(url: str, stop: Any, ready: Any, results: Any) -> None:
    target = Target(url, "")
    latencies, errors, live_failures = [], 0, 0
    with httpx.Client() as client:
        _post(client, target, "/v1/classify", SHORT_BODY)  # the connection, not measured
        ready.set()
        i = 0
        while not stop.is_set():
            started = time.perf_counter()
            try:
                status = _post(client, target, "/v1/classify", SHORT_BODY)
            except httpx.HTTPError:
                status = "transport"
            latencies.append(time.perf_counter() - started)
            errors += status != "200"
            i += 1
            if i % 10 == 0:
                try:
                    live_failures += client.get(url + "/health/live", timeout=5).status_code != 200
                except httpx.HTTPError:
                    live_failures += 1
            time.sleep(0.005)
    results.send((latencies, errors, live_failures))


def p99_ms(latencies: list[float]) -> float:
    if not latencies:
        return float("nan")
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] * 1000


def rest_p99_ms(target: Target, seconds: float = 3.0) -> float:
    """The probe's p99 on an idle server, measured the same way as during the barrage."""
    with Probe(target) as probe:
        time.sleep(seconds)
    return p99_ms(probe.latencies)


def settled_rss(pid: int, target: Target, idle_s: float = 2.5) -> int:
    """The tree's RSS once the server has been idle (its heap trimmed after a second idle)."""
    time.sleep(idle_s)
    httpx.get(target.url + "/health/live", timeout=10)
    return procstat.tree_rss_bytes(pid)


def reset_peaks(pid: int) -> None:
    for member in procstat.tree_pids(pid):
        with contextlib.suppress(OSError):
            Path(f"/proc/{member}/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def barrage(kind: str, target: Target, pid: int, requests: int, text_mb: float) -> Outcome:
    text = hostile_text(text_mb)
    rest_rss = settled_rss(pid, target)
    short_rest = rest_p99_ms(target)
    reset_peaks(pid)
    answers: list[tuple[str, float]] = []
    started = time.monotonic()
    with Probe(target) as probe:
        if kind == "grpc-stream":
            answers = _stream(target, text, requests)
        else:
            answers = _fire(kind, target, text, requests, started)
    seconds = time.monotonic() - started
    peak = procstat.tree_peak_rss_bytes(pid)
    after = settled_rss(pid, target)
    statuses = Counter(status for status, _ in answers)
    return Outcome(
        kind=kind,
        answers=dict(statuses),
        unexpected=sum(n for status, n in statuses.items() if status not in expected(kind)) + requests - len(answers),
        slowest_s=max((s for _, s in answers), default=float("nan")),
        rss_rest_mb=rest_rss / MB,
        rss_peak_mb=peak / MB,
        rss_after_mb=after / MB,
        short_p99_rest_ms=short_rest,
        short_p99_during_ms=p99_ms(probe.latencies),
        short_errors=probe.errors,
        live_failures=probe.live_failures,
        seconds=seconds,
        api_processes=max(1, len(procstat.tree_pids(pid)) - 1),
    )


def _fire(kind: str, target: Target, text: str, requests: int, started: float) -> list[tuple[str, float]]:
    is_grpc = kind in GRPC_KINDS
    send = GRPC_KINDS[kind] if is_grpc else HTTP_KINDS[kind]

    def one(_: int) -> tuple[str, float]:
        if is_grpc:
            with target.channel() as channel:
                status = send(channel, target, text)
        else:
            with httpx.Client() as client:
                try:
                    status = send(client, target, text)
                except httpx.HTTPError as error:
                    status = f"transport:{type(error).__name__}"
        return status, time.monotonic() - started

    with ThreadPoolExecutor(requests) as pool:
        return list(pool.map(one, range(requests)))


def render(outcomes: list[Outcome]) -> str:
    lines = [
        "| kind | answers | slowest s | RSS rest MB | peak MB | after MB | short p99 rest / during ms | live fails |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(o.answers.items()))
        lines.append(
            f"| {o.kind} | {answers} | {o.slowest_s:.2f} | {o.rss_rest_mb:.0f} | {o.rss_peak_mb:.0f} | "
            f"{o.rss_after_mb:.0f} | {o.short_p99_rest_ms:.1f} / {o.short_p99_during_ms:.1f} | {o.live_failures} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.hostile", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--grpc", required=True)
    p.add_argument("--pid", type=int, required=True, help="the server's top process (its tree is sampled)")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--text-mb", type=float, default=4.0)
    p.add_argument("--json", type=Path, help="write the outcomes here")
    args = p.parse_args(argv)
    for host in (args.url.split("//")[-1], args.grpc):
        if not host.startswith("127.0.0.1:"):
            p.error("only 127.0.0.1 is a target")
    target = Target(args.url, args.grpc)
    outcomes = []
    for kind in args.kinds.split(","):
        outcome = barrage(kind, target, args.pid, args.requests, args.text_mb)
        print(render([outcome]).splitlines()[-1], flush=True)
        outcomes.append(outcome)
    print(render(outcomes))
    if args.json:
        args.json.write_text(json.dumps([asdict(o) | {"short_ratio": o.short_ratio} for o in outcomes], indent=1))
    return 0 if all(o.unexpected == 0 for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
