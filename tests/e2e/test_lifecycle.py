"""Process lifecycle on small servers of their own (one demo model each): readiness only after
warm-up, ELECTRA_* environment twins, client disconnects dropping queued work, and SIGTERM
draining every accepted request before exiting 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import orjson
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import ROOT, ServerProcess, free_port, start_server

MODEL = "demo-classify"


def metric(url: str, name: str, **labels: str) -> float:
    """One sample of the server's /metrics (0 when the series does not exist yet)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def wait_for(condition, timeout_s: float, what: str) -> None:  # condition: a zero-argument predicate
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# ------------------------------------------------------------------ readiness and ELECTRA_* twins


@dataclass
class Observed:
    """What a client polling every few ms saw while the server started."""

    ready: list[object] = field(default_factory=list)  # /health/ready statuses in order, deduplicated
    live_while_loading: int | None = None
    task_while_loading: httpx.Response | None = None


@pytest.fixture(scope="module")
def env_server(
    demo_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, Observed]]:
    """A server configured through ELECTRA_* variables only (no flags), watched from its first moment."""
    http_port, grpc_port = free_port(), free_port()
    env = {
        "ELECTRA_MODEL_REPOSITORY": str(demo_repository),
        "ELECTRA_MODELS": MODEL,
        "ELECTRA_HOST": "127.0.0.1",
        "ELECTRA_HTTP_PORT": str(http_port),
        "ELECTRA_GRPC_PORT": str(grpc_port),
        "ELECTRA_MAX_BATCH_SIZE": "2",
        "ELECTRA_MAX_QUEUE_DELAY_MS": "100",
        "ELECTRA_MAX_INPUTS_PER_REQUEST": "4",
    }
    log_path = tmp_path_factory.mktemp("env-server") / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "server"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            cwd=ROOT,
        )
    handle = ServerProcess(process, http_port, grpc_port, demo_repository, log_path, env)
    observed = Observed()
    try:
        deadline = time.monotonic() + 240
        while True:
            assert process.poll() is None, handle.log()[-3000:]
            assert time.monotonic() < deadline, handle.log()[-3000:]
            try:
                status: object = httpx.get(f"{handle.url}/health/ready", timeout=5).status_code
            except httpx.TransportError:
                status = "refused"
            if not observed.ready or observed.ready[-1] != status:
                observed.ready.append(status)
            if status == 503 and observed.task_while_loading is None:
                observed.live_while_loading = httpx.get(f"{handle.url}/health/live", timeout=5).status_code
                observed.task_while_loading = httpx.post(f"{handle.url}/v1/classify", json={"inputs": "x"}, timeout=5)
            if status == 200:
                break
            time.sleep(0.01)
        yield handle, observed
    finally:
        assert handle.stop() == 0, handle.log()[-3000:]


def test_ready_only_after_warm_up(env_server: tuple[ServerProcess, Observed]) -> None:
    handle, observed = env_server
    # Refused (not yet listening), then 503 while loading and warming up, then 200 for good.
    assert observed.ready[-1] == 200
    assert 503 in observed.ready, observed.ready
    assert observed.ready.index(503) < observed.ready.index(200)
    assert set(observed.ready) <= {"refused", 503, 200}
    assert observed.live_while_loading == 200  # alive, just not ready
    refused = observed.task_while_loading
    assert refused is not None and refused.status_code == 503 and set(refused.json()) == {"error"}
    assert int(refused.headers["retry-after"]) >= 1
    assert "warmed up" in handle.log()
    assert metric(handle.url, "electra_model_ready", model=MODEL) == 1


async def test_env_twins_configure_the_server(env_server: tuple[ServerProcess, Observed]) -> None:
    handle, _ = env_server
    # ELECTRA_HTTP_PORT / ELECTRA_MODELS: this port, this one model.
    models = httpx.get(f"{handle.url}/v1/models").json()["models"]
    assert [m["name"] for m in models] == [MODEL]
    # ELECTRA_MAX_INPUTS_PER_REQUEST=4.
    assert httpx.post(f"{handle.url}/v1/classify", json={"inputs": ["a"] * 5}).status_code == 413
    assert httpx.post(f"{handle.url}/v1/classify", json={"inputs": ["a"] * 4}).status_code == 200
    # ELECTRA_MAX_BATCH_SIZE=2: eight concurrent rows never share a run with more than one other.
    count = metric(handle.url, "electra_batch_size_count", model=MODEL)
    small = metric(handle.url, "electra_batch_size_bucket", model=MODEL, le="2.0")
    rows = metric(handle.url, "electra_batch_size_sum", model=MODEL)
    async with httpx.AsyncClient(base_url=handle.url, timeout=60) as client:
        responses = await asyncio.gather(*(client.post("/v1/classify", json={"inputs": f"row {i}"}) for i in range(8)))
    assert all(r.status_code == 200 for r in responses)
    runs = metric(handle.url, "electra_batch_size_count", model=MODEL) - count
    assert metric(handle.url, "electra_batch_size_sum", model=MODEL) - rows == 8
    assert metric(handle.url, "electra_batch_size_bucket", model=MODEL, le="2.0") - small == runs >= 4


# ------------------------------------------------------------------ client disconnect


@pytest.fixture(scope="module")
def slow_server(demo_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Holds a partial batch for 10 s: queued work stays queued long enough to watch."""
    log_path = tmp_path_factory.mktemp("slow-server") / "server.log"
    # A batch limit above the 20 rows queued below, so the partial batch waits out the delay.
    handle = start_server(demo_repository, log_path, "--models", MODEL, "--max-queue-delay-ms", "10000",
                          "--max-batch-size", "64", "--max-batch-tokens", "8192",
                          "--drain-timeout-s", "2")  # fmt: skip
    try:
        handle.wait_ready()
        yield handle
    finally:
        assert handle.stop() == 0, handle.log()[-3000:]


def test_client_disconnect_drops_queued_work(slow_server: ServerProcess) -> None:
    url = slow_server.url
    cancelled = metric(url, "electra_dropped_total", model=MODEL, reason="cancelled")
    runs = metric(url, "electra_batch_size_count", model=MODEL)
    # Rows of one length: no padding limit cuts them early.
    body = orjson.dumps({"inputs": ["queued text number seven"] * 20})
    request = (
        f"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", slow_server.http_port)) as sock:
        sock.sendall(request)
        wait_for(lambda: metric(url, "electra_queue_depth", model=MODEL) == 20, 30, "20 rows queued")
    # The client is gone: its rows leave the queue without ever reaching the model.
    wait_for(
        lambda: metric(url, "electra_dropped_total", model=MODEL, reason="cancelled") - cancelled == 1,
        5,
        "the request (of 20 rows) dropped as cancelled",
    )
    assert metric(url, "electra_queue_depth", model=MODEL) == 0
    assert metric(url, "electra_batch_size_count", model=MODEL) == runs
    wait_for(lambda: metric(url, "electra_requests_total", protocol="rest", code="499") >= 1, 5, "the request counted")


# ------------------------------------------------------------------ SIGTERM


def test_sigterm_while_loading_exits_0(demo_repository: Path, tmp_path: Path) -> None:
    """Kubernetes may stop a pod that is still starting: no traceback, exit 0."""
    handle = start_server(demo_repository, tmp_path / "server.log", "--drain-timeout-s", "5")  # all four models
    try:
        wait_for(lambda: _status(f"{handle.url}/health/live") == 200, 60, "the HTTP port")
        assert _status(f"{handle.url}/health/ready") == 503, "loaded before the test could stop it"
        handle.process.send_signal(signal.SIGTERM)
        assert handle.process.wait(60) == 0, handle.log()[-3000:]
        assert "Traceback" not in handle.log()
    finally:
        handle.stop()


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.TransportError:
        return None


async def test_sigterm_answers_accepted_requests_then_exits_0(demo_repository: Path, tmp_path: Path) -> None:
    drain_timeout_s = 20
    handle = start_server(demo_repository, tmp_path / "server.log", "--models", MODEL,
                          "--max-queue-delay-ms", "2500", "--drain-timeout-s", str(drain_timeout_s))  # fmt: skip
    try:
        handle.wait_ready()
        async with httpx.AsyncClient(base_url=handle.url, timeout=60) as client:
            # gRPC health (what a Kubernetes grpc probe or a load balancer watches) on the wire.
            channel = grpc.aio.insecure_channel(handle.grpc_target)
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
            # gRPC health follows readiness within its 0.5 s poll: wait for SERVING first.
            status = None
            while status != health_pb2.HealthCheckResponse.SERVING:
                status = (await asyncio.wait_for(watch.read(), 10)).status
            accepted = [
                asyncio.create_task(client.post("/v1/classify", json={"inputs": f"accepted {i}"})) for i in range(6)
            ]
            # Accepted means queued: six rows wait out the 2.5 s queue delay.
            deadline = time.monotonic() + 30
            while metric(handle.url, "electra_queue_depth", model=MODEL) < 6:
                assert time.monotonic() < deadline, "requests never queued"
                await asyncio.sleep(0.02)
            assert not any(task.done() for task in accepted)
            handle.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            # Drain begins with NOT_SERVING, while the accepted requests are still queued.
            update = await asyncio.wait_for(watch.read(), 2)
            assert update.status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert not any(task.done() for task in accepted)
            watch.cancel()
            await channel.close()

            # Draining: not ready, and new work is refused (or the port is already closed).
            for _ in range(100):
                ready = await client.get("/health/ready")
                if ready.status_code == 503:
                    break
                await asyncio.sleep(0.01)
            assert ready.status_code == 503 and ready.json()["error"] == "draining"
            try:
                late = await client.post("/v1/classify", json={"inputs": "too late"})
            except httpx.TransportError:
                pass
            else:
                assert late.status_code == 503 and set(late.json()) == {"error"}
                assert "retry-after" in late.headers
            assert not any(task.done() for task in accepted), "the queue delay ran out before the checks"

            responses = await asyncio.gather(*accepted)
        assert [r.status_code for r in responses] == [200] * 6
        assert all(r.json()[0]["label"] in ("NEGATIVE", "POSITIVE") for r in responses)
        code = await asyncio.to_thread(handle.process.wait, drain_timeout_s + 10)
        assert code == 0, handle.log()[-3000:]
        assert time.monotonic() - signalled < drain_timeout_s
        assert "draining" in handle.log()
    finally:
        handle.stop()
