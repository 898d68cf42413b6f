"""`--workers 2` on a real server: two API processes on the shared ports, one model owner. Every
protocol answers as the one-process server does, metrics and Triton statistics add up over the
processes, a worker that is killed is replaced (the other goes on serving), a model reloads under
load with nothing lost, and SIGTERM drains it all within the budget."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.http as thttp

from proto.electra.v1 import electra_pb2 as pb
from proto.electra.v1 import electra_pb2_grpc as pb_grpc
from server.workers.mirror import OWNER_SILENCE_S
from tests.e2e.conftest import ServerProcess, start_server
from tests.e2e.test_hostile import metric
from tests.e2e.test_model_control import MODEL, ClosedLoop, add_version

TEXTS = ["A delightful film.", "Terrible, boring and far too long.", "Ada Lovelace wrote the first program.", ""]


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return sorted(int(p) for p in out.split())


@pytest.fixture(scope="module")
def workers(served_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    handle = start_server(
        served_repository, tmp_path_factory.mktemp("workers") / "server.log", "--workers", "2",
        "--models", "cls3,qa-short,tag5", "--max-queue-delay-ms", "5",
    )  # fmt: skip
    try:
        handle.wait_ready()
        yield handle
    finally:
        assert handle.stop() == 0, handle.log()[-3000:]


def test_an_idle_server_stays_ready(workers: ServerProcess) -> None:
    """The owner's periodic table is its heartbeat: it skipped unchanged tables, so after 3 s
    without traffic every worker thought the owner silent and answered 503 "loading"."""
    time.sleep(OWNER_SILENCE_S + 1.5)
    for _ in range(12):  # new connections: both workers
        with httpx.Client(base_url=workers.url, timeout=30) as fresh:
            response = fresh.get("/health/ready")
        assert response.status_code == 200, response.text


def test_every_protocol_answers_as_one_process_does(workers: ServerProcess, server: ServerProcess) -> None:
    body = {"model": "cls3", "inputs": TEXTS, "parameters": {"top_k": None}}
    expected = httpx.post(f"{server.url}/v1/classify", json=body, timeout=30).json()
    with httpx.Client(base_url=workers.url, timeout=30) as http:
        # New connections spread over both workers (SO_REUSEPORT): enough of them reach each.
        for _ in range(24):
            with httpx.Client(base_url=workers.url, timeout=30) as fresh:
                response = fresh.post("/v1/classify", json=body)
            assert response.status_code == 200 and response.json() == expected
        qa = http.post("/v1/qa", json={"model": "qa-short", "inputs": {"question": "Who?", "context": "Ada wrote."}})
        assert qa.status_code == 200 and set(qa.json()) == {"score", "start", "end", "answer"}
    log = workers.log()
    assert "[w0] electra.request" in log and "[w1] electra.request" in log, "one worker answered everything"
    with grpc.insecure_channel(workers.grpc_target) as channel:
        typed = pb_grpc.ElectraServiceStub(channel).Classify(
            pb.ClassifyRequest(model="cls3", inputs=[pb.ClassifyInput(text=TEXTS[0])]), timeout=30
        )
    assert typed.results[0].labels[0].label == expected[0][0]["label"] and typed.model_version == "1"
    client = thttp.InferenceServerClient(f"127.0.0.1:{workers.http_port}")
    text = thttp.InferInput("TEXT", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[TEXTS[1].encode()]], dtype=object))
    result = client.infer("cls3", [text])
    assert result.as_numpy("LOGITS").shape == (1, 3)
    client.close()


def test_metrics_and_statistics_add_up_over_the_processes(workers: ServerProcess) -> None:
    labels = {"model": "tag5", "protocol": "rest", "code": "200"}
    before = metric(workers, "electra_requests_total", **labels)
    stats_before = httpx.get(f"{workers.url}/v2/models/tag5/stats", timeout=30).json()["model_stats"][0]
    for i in range(16):
        with httpx.Client(base_url=workers.url, timeout=30) as fresh:  # new connections: both workers
            assert fresh.post("/v1/tag", json={"model": "tag5", "inputs": f"Ada number {i}"}).status_code == 200
    assert metric(workers, "electra_requests_total", **labels) == before + 16  # whichever worker is scraped
    stats = httpx.get(f"{workers.url}/v2/models/tag5/stats", timeout=30).json()["model_stats"][0]
    assert stats["inference_count"] - stats_before["inference_count"] == 16
    assert stats["execution_count"] > stats_before["execution_count"]  # the owner's model runs
    assert metric(workers, "electra_batch_size_count", model="tag5") >= 1  # written by the owner


def test_a_killed_worker_is_replaced_while_the_other_serves(workers: ServerProcess) -> None:
    before = children(workers.process.pid)
    assert len(before) == 2
    victim = before[0]
    with ThreadPoolExecutor(4) as pool:

        def with_retries(i: int) -> int:
            # The client's retry policy: a request on the killed worker's connection fails; try again.
            for _ in range(10):
                try:
                    with httpx.Client(base_url=workers.url, timeout=30) as fresh:
                        return fresh.post("/v1/classify", json={"model": "cls3", "inputs": f"text {i}"}).status_code
                except httpx.TransportError:
                    time.sleep(0.2)
            return 0

        futures = [pool.submit(with_retries, i) for i in range(40)]
        time.sleep(0.2)
        subprocess.run(["kill", "-9", str(victim)], check=True)
        codes = [f.result() for f in futures]
    assert codes == [200] * 40
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = children(workers.process.pid)
        if len(now) == 2 and victim not in now:
            break
        time.sleep(0.2)
    assert len(children(workers.process.pid)) == 2 and victim not in children(workers.process.pid)
    deadline = time.monotonic() + 60
    while httpx.get(f"{workers.url}/health/ready", timeout=5).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert httpx.get(f"{workers.url}/health/ready", timeout=5).status_code == 200


def test_reloads_under_load_lose_nothing_with_workers(tmp_path: Path, demo_repository: Path) -> None:
    source = demo_repository / "demo-classify"
    repository = tmp_path / "models"
    add_version(repository, source, 1)
    handle = start_server(
        repository, tmp_path / "server.log", "--workers", "2", "--model-control-mode", "explicit",
        "--load-model", MODEL, "--drain-timeout-s", "20",
    )  # fmt: skip
    try:
        handle.wait_ready()
        with ClosedLoop(handle.url, clients=4) as loop:
            time.sleep(1)
            for version in range(2, 7):
                add_version(repository, source, version)
                response = httpx.post(f"{handle.url}/v2/repository/models/{MODEL}/load", json={}, timeout=120)
                assert response.status_code == 200, response.text
            time.sleep(0.5)
        failed = [o for o in loop.outcomes if o[2] != 200]
        assert len(loop.outcomes) > 50 and not failed, failed[:5]
        assert max(loop.outcomes, key=lambda o: o[0])[3] == "6"
    finally:
        assert handle.stop() == 0, handle.log()[-3000:]


def test_sigterm_drains_the_workers_then_the_owner(tmp_path: Path, served_repository: Path) -> None:
    handle = start_server(
        served_repository, tmp_path / "server.log", "--workers", "2", "--models", "demo-qa", "--drain-timeout-s", "10"
    )
    try:
        handle.wait_ready()
        context = " ".join(f"Paragraph {i}: the experiment number {i * 37} ran for {i + 3} days." for i in range(400))
        with ThreadPoolExecutor(2) as pool:
            accepted = pool.submit(
                httpx.post, f"{handle.url}/v1/qa", timeout=60,
                json={"model": "demo-qa", "inputs": {"question": "Which ran longest?", "context": context}},
            )  # fmt: skip
            time.sleep(0.5)  # accepted and running
            started = time.monotonic()
            handle.process.send_signal(signal.SIGTERM)
            assert accepted.result().status_code == 200
        assert handle.process.wait(30) == 0 and time.monotonic() - started < 11
        assert not children(handle.process.pid)
    finally:
        handle.stop()


def test_workers_answer_and_leave_when_the_owner_is_killed(tmp_path: Path, served_repository: Path) -> None:
    """SIGKILL to the owner (no drain, no goodbye): the request waiting on it is answered 503, the
    workers exit on their own and free the ports for the server that replaces this one."""
    handle = start_server(served_repository, tmp_path / "server.log", "--workers", "2", "--models", "demo-qa")
    try:
        handle.wait_ready()
        workers_before = children(handle.process.pid)
        context = " ".join(f"Paragraph {i}: the experiment number {i * 37} ran for {i + 3} days." for i in range(800))
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(
                httpx.post, f"{handle.url}/v1/qa", timeout=60,
                json={"model": "demo-qa", "inputs": {"question": "Which ran longest?", "context": context}},
            )  # fmt: skip
            time.sleep(0.5)
            handle.process.kill()
            handle.process.wait(10)
            answer = waiting.result()
        assert answer.status_code == 503 and "owner" in answer.json()["error"], answer.text
        assert answer.headers["retry-after"]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers_before):
            time.sleep(0.2)
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers_before), handle.log()[-3000:]
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", handle.http_port))  # nobody holds the port any more
    finally:
        handle.stop()
