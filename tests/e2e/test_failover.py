"""Failover behind Debian's nginx: two real replicas behind one REST (HTTP/1.1) and one gRPC
(HTTP/2, `grpc_pass`) upstream on loopback (tests/nginx.py), closed loops of REST and gRPC clients
through nginx, and one replica stopped mid-run.

- SIGTERM: no request is lost. The drained replica answers what it accepted; what it refuses (503,
  or gRPC UNAVAILABLE, both with Retry-After) or drops when its port closes, nginx sends to the
  other replica (REST: `proxy_next_upstream error http_502 http_503 non_idempotent`), or the
  client's retry policy sends again (gRPC: a status in trailers is out of nginx's sight; and a call
  that reaches grpc's server just as it stops is answered CANCELLED, grpc/grpc#41785).
- SIGKILL: only the requests in flight at the kill may fail on their first attempt (REST: nginx
  sends most of them again itself; gRPC: nginx never resends a call it has sent, its request bodies
  are unbuffered); every one succeeds when the client retries.

The client retry policy used here is the one documented for clients: inference requests have no
side effects, so they are retried on connection errors, HTTP 502 / 503 and gRPC UNAVAILABLE (and
CANCELLED the client did not cause itself), at most MAX_ATTEMPTS attempts in all, with jittered
exponential backoff, within the request's own deadline.
"""

from __future__ import annotations

import json
import random
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import grpc
import httpx
import pytest

from proto.electra.v1 import electra_pb2 as pb
from proto.electra.v1 import electra_pb2_grpc as pb_grpc
from tests.e2e.conftest import ServerProcess, serve_as, start_server
from tests.nginx import Nginx, missing_reason, start_nginx

_MISSING = missing_reason()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")

MODEL = "cls3"
LABELS = ("contradiction", "entailment", "neutral")
CLIENTS = 2  # per protocol
WARM_S = 2.5  # traffic before the signal
AFTER_S = 3.5  # traffic after it
DRAIN_TIMEOUT_S = 10
CALL_TIMEOUT_S = 10.0
# A request sent just after a kill may still be written to the killed replica's idle keepalive
# connection before nginx has read its close: it counts as in flight at the kill.
KILL_RACE_S = 0.05

# The client retry policy (see the module docstring and the deploy docs).
MAX_ATTEMPTS = 3
BACKOFF_BASE_S = 0.1
BACKOFF_CAP_S = 1.0
RETRY_HTTP_STATUSES = frozenset({502, 503})
# Errors where the request never reached a replica, or its connection broke before an answer.
RETRY_HTTP_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadError, httpx.WriteError,
                     httpx.RemoteProtocolError)  # fmt: skip
# CANCELLED: this client never cancels a call itself (its deadline gives DEADLINE_EXCEEDED), and a
# grpc server that stops answers calls it had received but not yet dispatched CANCELLED
# (grpc/grpc#41785, grpcio 1.85 included): on a replica being drained that means "not served".
RETRY_GRPC_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})


def backoff_s(retry: int) -> float:
    """Before retry 1, 2, ...: 50-100 ms, 100-200 ms, ... (half fixed, half jitter), at most 1 s."""
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (retry - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def rest_once(http: httpx.Client, body: dict[str, str]) -> tuple[str | None, bool]:
    """One attempt: (None, _) for a correct answer, else (the error, whether the policy retries it)."""
    try:
        response = http.post("/v1/classify", json=body)
    except RETRY_HTTP_ERRORS as exc:
        return f"{type(exc).__name__}: {exc}", True
    except httpx.HTTPError as exc:  # a read timeout: the request's time is spent
        return f"{type(exc).__name__}: {exc}", False
    if response.status_code != 200:
        return f"http {response.status_code}", response.status_code in RETRY_HTTP_STATUSES
    answer = response.json()
    return (None, False) if answer[0]["label"] in LABELS else (f"bad answer {answer}", False)


def grpc_once(stub: pb_grpc.ElectraServiceStub, message: pb.ClassifyRequest) -> tuple[str | None, bool]:
    try:
        response = stub.Classify(message, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as exc:
        code = exc.code()  # type: ignore[attr-defined]
        return f"grpc {code.name}: {exc.details()}", code in RETRY_GRPC_CODES  # type: ignore[attr-defined]
    label = response.results[0].labels[0].label
    return (None, False) if label in LABELS else (f"bad answer {label}", False)


@dataclass
class Attempt:
    protocol: str
    started: float
    ended: float
    error: str | None  # None: a correct answer


@dataclass
class Request:
    protocol: str
    attempts: list[Attempt]

    @property
    def ok(self) -> bool:
        return self.attempts[-1].error is None


@dataclass
class Traffic:
    """Closed loops of REST and gRPC clients through nginx, each request sent under the retry policy."""

    front: Nginx
    clients: int = CLIENTS
    requests: list[Request] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _send(self, protocol: str, once: Callable[[], tuple[str | None, bool]]) -> None:
        attempts: list[Attempt] = []
        for number in range(1, MAX_ATTEMPTS + 1):
            started = time.monotonic()
            error, retryable = once()
            attempts.append(Attempt(protocol, started, time.monotonic(), error))
            if error is None or not retryable or number == MAX_ATTEMPTS:
                break
            time.sleep(backoff_s(number))
        self.requests.append(Request(protocol, attempts))

    def _rest(self, n: int) -> None:
        with httpx.Client(base_url=self.front.url, timeout=CALL_TIMEOUT_S) as http:
            i = 0
            while not self._stop.is_set():
                self._send("rest", partial(rest_once, http, {"model": MODEL, "inputs": f"rest client {n} request {i}"}))
                i += 1

    def _grpc(self, n: int) -> None:
        with grpc.insecure_channel(self.front.grpc_target) as channel:
            stub = pb_grpc.ElectraServiceStub(channel)
            i = 0
            while not self._stop.is_set():
                text = f"grpc client {n} request {i}"
                message = pb.ClassifyRequest(model=MODEL, inputs=[pb.ClassifyInput(text=text)])
                self._send("grpc", partial(grpc_once, stub, message))
                i += 1

    def __enter__(self) -> Traffic:
        self._threads = [
            threading.Thread(target=loop, args=(n,), daemon=True, name=f"{loop.__name__}-{n}")
            for loop in (self._rest, self._grpc)
            for n in range(self.clients)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        deadline = time.monotonic() + MAX_ATTEMPTS * (CALL_TIMEOUT_S + BACKOFF_CAP_S) + 5
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self._threads), "a client thread did not stop"

    # -- figures ---------------------------------------------------------------------------------

    def attempts(self, protocol: str) -> list[Attempt]:
        return [a for r in self.requests if r.protocol == protocol for a in r.attempts]

    def in_flight_at(self, moment: float, protocol: str, window_s: float = 0.0) -> list[Attempt]:
        """Attempts under way at `moment` or begun within `window_s` after it."""
        return [a for a in self.attempts(protocol) if a.started <= moment + window_s and a.ended >= moment]

    def figures(self, moment: float) -> dict[str, dict[str, object]]:
        out: dict[str, dict[str, object]] = {}
        for protocol in ("rest", "grpc"):
            requests = [r for r in self.requests if r.protocol == protocol]
            failed_attempts = [a for a in self.attempts(protocol) if a.error is not None]
            out[protocol] = {
                "requests": len(requests),
                "attempts": len(self.attempts(protocol)),
                "in_flight_at_signal": len(self.in_flight_at(moment, protocol)),
                "failures_before_retry": len(failed_attempts),
                "failures_after_retry": sum(not r.ok for r in requests),
                "errors": dict(Counter(a.error for a in failed_attempts)),
            }
        return out


@pytest.fixture(scope="module")
def failover_repository(tmp_path_factory: pytest.TempPathFactory, export_model: Callable[..., Path]) -> Path:
    """Only cls3 of `served_repository` (the same export, cached per session): a small 3-label classifier."""
    source = export_model("classify", labels=list(LABELS), seed=31)
    repository = tmp_path_factory.mktemp("failover-models")
    serve_as(source, repository, MODEL)
    return repository


@pytest.fixture(scope="module")
def replicas(failover_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    """Three replicas, started together: A and B for the SIGTERM run, B and C for the SIGKILL run."""
    logs = tmp_path_factory.mktemp("failover-logs")
    handles: list[ServerProcess] = []
    try:
        for name in "abc":
            args = ("--models", MODEL, "--max-queue-delay-ms", "20", "--drain-timeout-s", str(DRAIN_TIMEOUT_S))
            handles.append(start_server(failover_repository, logs / f"{name}.log", *args))
        for handle in handles:
            handle.wait_ready(timeout_s=120)
        yield handles
    finally:
        for handle in handles:
            handle.stop(timeout_s=DRAIN_TIMEOUT_S + 5)


def upstream_counts(front: Nginx) -> Counter[str]:
    """Requests nginx logged as answered by each upstream (the last one tried): HTTP 200 and, for
    gRPC, status OK (a trailers-only UNAVAILABLE is an HTTP 200 too)."""
    return Counter(
        row["upstream"].split(", ")[-1]
        for row in front.access_log()
        if row["status"] == "200" and row["grpc_status_header"] == "-" and row["grpc_status"] in ("-", "0")
    )


def retried_by_nginx(front: Nginx) -> int:
    return sum(", " in row["upstream"] for row in front.access_log())


def codes_after_drain_began(server: ServerProcess) -> Counter[str]:
    """The outcome codes (HTTP statuses, on every protocol) of the requests the server logged after
    its drain began, by protocol: `rest 200`, `grpc 503`, ..."""
    _, _, after = server.log().partition("draining (up to")
    return Counter(" ".join(m) for m in re.findall(r"electra\.request: \S+ (rest|grpc) \S+ (\d{3}) ", after))


def run_phase(front: Nginx, victim: ServerProcess, stop: Callable[[], None]) -> tuple[Traffic, float, float | None]:
    """Traffic for WARM_S, `stop()`, traffic for AFTER_S more; returns it, when `stop` was called and
    when the victim's process was seen gone (None: still running)."""
    exited = None
    with Traffic(front) as traffic:
        time.sleep(WARM_S)
        signalled = time.monotonic()
        stop()
        while time.monotonic() < signalled + AFTER_S:
            if exited is None and victim.process.poll() is not None:
                exited = time.monotonic()
            time.sleep(0.01)
    return traffic, signalled, exited


@pytest.mark.timeout(300)
def test_failover_behind_nginx_sigterm_loses_nothing_sigkill_only_in_flight(
    replicas: list[ServerProcess], tmp_path: Path
) -> None:
    a, b, c = replicas
    report: dict[str, object] = {}

    # ---- SIGTERM to A, behind nginx with A and B.
    front = start_nginx(tmp_path / "nginx-term", [a.http_port, b.http_port], [a.grpc_port, b.grpc_port])
    try:
        traffic, signalled, exited = run_phase(front, a, lambda: a.process.send_signal(signal.SIGTERM))
        served, retried, error_log = upstream_counts(front), retried_by_nginx(front), front.error_log()
    finally:
        front.stop()
    assert exited is not None, f"A still running {AFTER_S}s after SIGTERM:\n{a.log()[-3000:]}"
    figures = traffic.figures(signalled)
    drained = codes_after_drain_began(a)
    report["sigterm"] = {
        **figures, "retried_by_nginx": retried, "drain_s": round(exited - signalled, 2),
        "answered_by": dict(served), "replica_a_after_sigterm": dict(drained),
    }  # fmt: skip
    print(f"\nSIGTERM figures: {json.dumps(report['sigterm'])}")
    assert a.process.returncode == 0, a.log()[-3000:]
    assert "Traceback" not in a.log()
    # What A accepted it answered; the rest it refused (503): nothing cut off (499) or broken (500).
    assert set(drained) <= {"rest 200", "grpc 200", "rest 503", "grpc 503"}, drained
    for replica in (a, b):  # both took traffic: the signal hit a replica that was serving
        assert served[f"127.0.0.1:{replica.http_port}"] > 0 and served[f"127.0.0.1:{replica.grpc_port}"] > 0, served
    for protocol in ("rest", "grpc"):
        assert figures[protocol]["requests"] >= 20, figures  # enough traffic to mean something
        assert figures[protocol]["failures_after_retry"] == 0, (figures, error_log[-3000:])
    # REST: nginx itself sends what the draining replica refuses (503) or drops to the other one.
    assert figures["rest"]["failures_before_retry"] == 0, (figures, error_log[-3000:])
    # gRPC: only the drain's UNAVAILABLE (a status in trailers, out of nginx's sight) or grpc's
    # CANCELLED for a call that arrived as its server stopped reaches the client, and only while A
    # drained (a call sent just before the signal may reach A after it).
    failed = [x for x in traffic.attempts("grpc") if x.error is not None]
    assert all((x.error or "").startswith(("grpc UNAVAILABLE", "grpc CANCELLED")) for x in failed), figures
    assert all(x.ended >= signalled and x.started <= exited + KILL_RACE_S for x in failed), figures

    # ---- SIGKILL to C, behind a fresh nginx with B and C.
    front = start_nginx(tmp_path / "nginx-kill", [b.http_port, c.http_port], [b.grpc_port, c.grpc_port])
    try:
        traffic, killed, exited = run_phase(front, c, c.process.kill)
        served, retried, error_log = upstream_counts(front), retried_by_nginx(front), front.error_log()
    finally:
        front.stop()
    assert exited is not None and c.process.returncode == -signal.SIGKILL
    figures = traffic.figures(killed)
    report["sigkill"] = {**figures, "retried_by_nginx": retried, "answered_by": dict(served)}
    print(f"SIGKILL figures: {json.dumps(report['sigkill'])}")
    for replica in (b, c):
        assert served[f"127.0.0.1:{replica.http_port}"] > 0 and served[f"127.0.0.1:{replica.grpc_port}"] > 0, served
    for protocol in ("rest", "grpc"):
        assert figures[protocol]["requests"] >= 20, figures
        # Only attempts in flight at the kill failed (at most one a client: a closed loop)...
        may_fail = traffic.in_flight_at(killed, protocol, KILL_RACE_S)
        failed = [x for x in traffic.attempts(protocol) if x.error is not None]
        assert all(x in may_fail for x in failed), (figures, error_log[-3000:])
        assert len(failed) <= CLIENTS, figures
        # ...and the retry policy answered every one of them.
        assert figures[protocol]["failures_after_retry"] == 0, (figures, error_log[-3000:])

    assert b.stop(DRAIN_TIMEOUT_S + 5) == 0, b.log()[-3000:]
