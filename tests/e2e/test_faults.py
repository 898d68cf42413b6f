"""Fault isolation on a real server whose model runtime fails on purpose (tests/fault_server.py):
a failing input fails only its own request (500 with a request id, counted), an out-of-memory
batch is split until every row is answered, runs that keep failing turn readiness false until a
probe succeeds, and a batching loop that keeps dying turns liveness false."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import ServerProcess, start_server
from tests.fakes import MARKER_TEXT, write_model


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    from export.synthetic import save_tokenizer

    root = tmp_path_factory.mktemp("faults")
    save_tokenizer(root / "tok")
    repository = root / "models"
    write_model(repository, root / "tok" / "tokenizer.json", "clf", "classify")
    faults = root / "faults.json"
    faults.write_text("{}")
    handle = start_server(
        repository, root / "server.log", "--max-queue-delay-ms", "20", "--max-batch-size", "8",
        env={"ELECTRA_TEST_FAULTS": str(faults)}, module="tests.fault_server",
    )  # fmt: skip
    try:
        handle.wait_ready(60)
        yield handle, faults
    finally:
        assert handle.stop() == 0, handle.log()[-3000:]


def set_faults(path: Path, **faults: object) -> None:
    staged = path.with_suffix(".tmp")
    staged.write_text(json.dumps(faults))
    staged.replace(path)
    time.sleep(0.05)  # a new mtime (the fake reads the file again when it changes)


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{server.url}/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def classify_many(server: ServerProcess, texts: list[str]) -> list[httpx.Response]:
    with httpx.Client(base_url=server.url, timeout=30) as http, ThreadPoolExecutor(len(texts)) as pool:
        return list(pool.map(lambda t: http.post("/v1/classify", json={"model": "clf", "inputs": t}), texts))


def test_a_failing_input_fails_only_its_request(faulty: tuple[ServerProcess, Path]) -> None:
    server, faults = faulty
    set_faults(faults, marker=MARKER_TEXT, marker_mode="error")
    try:
        failures = metric(server, "electra_batch_failures_total", kind="error")
        texts = [f"a fine text {i}" for i in range(12)]
        texts[5] = f"a {MARKER_TEXT} text"
        responses = classify_many(server, texts)
        for i, response in enumerate(responses):
            if i == 5:
                assert response.status_code == 500
                error = response.json()["error"]
                assert error == f"internal error (request id {response.headers['x-request-id']})"
            else:
                assert response.status_code == 200, (i, response.text)
        assert metric(server, "electra_batch_failures_total", kind="error") > failures
        assert metric(server, "electra_requests_total", model="clf", code="500") >= 1
        assert "injected failure on the marker" in server.log()  # the detail is in the log, not the answer
        assert httpx.get(f"{server.url}/health/ready", timeout=5).status_code == 200
    finally:
        set_faults(faults)


def test_an_out_of_memory_batch_is_split_and_every_row_answered(faulty: tuple[ServerProcess, Path]) -> None:
    server, faults = faulty
    set_faults(faults, marker=MARKER_TEXT, marker_mode="oom")
    try:
        retried = metric(server, "electra_batch_retried_rows_total", model="clf")
        texts = [f"{MARKER_TEXT} number {i}" if i % 3 == 0 else f"plain number {i}" for i in range(16)]
        responses = classify_many(server, texts)
        assert [r.status_code for r in responses] == [200] * len(texts)
        assert metric(server, "electra_batch_failures_total", kind="oom") >= 1
        assert metric(server, "electra_batch_retried_rows_total", model="clf") > retried
    finally:
        set_faults(faults)


def test_runs_that_keep_failing_turn_readiness_false_until_one_succeeds(faulty: tuple[ServerProcess, Path]) -> None:
    server, faults = faulty
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(server.grpc_target))
    set_faults(faults, error=True)
    try:
        for i in range(5):
            response = httpx.post(f"{server.url}/v1/classify", json={"model": "clf", "inputs": f"x{i}"}, timeout=30)
            assert response.status_code in (500, 503)
        assert httpx.get(f"{server.url}/health/ready", timeout=5).status_code == 503
        assert httpx.get(f"{server.url}/health/live", timeout=5).status_code == 200  # a restart would not help
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if (
                health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                == health_pb2.HealthCheckResponse.NOT_SERVING
            ):
                break
            time.sleep(0.1)
        assert (
            health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            == health_pb2.HealthCheckResponse.NOT_SERVING
        )
    finally:
        set_faults(faults)
    deadline = time.monotonic() + 10  # the probe runs every 2 s
    while time.monotonic() < deadline and httpx.get(f"{server.url}/health/ready", timeout=5).status_code != 200:
        time.sleep(0.1)
    assert httpx.get(f"{server.url}/health/ready", timeout=5).status_code == 200
    assert httpx.post(f"{server.url}/v1/classify", json={"model": "clf", "inputs": "ok"}, timeout=30).status_code == 200


def test_a_batching_loop_that_keeps_dying_turns_liveness_false(tmp_path: Path) -> None:
    """Its own server: a dead model cannot come back without a restart (which is what liveness asks for)."""
    from export.synthetic import save_tokenizer

    save_tokenizer(tmp_path / "tok")
    write_model(tmp_path / "models", tmp_path / "tok" / "tokenizer.json", "clf", "classify")
    faults = tmp_path / "faults.json"
    faults.write_text("{}")
    server = start_server(
        tmp_path / "models", tmp_path / "server.log", env={"ELECTRA_TEST_FAULTS": str(faults)},
        module="tests.fault_server",
    )  # fmt: skip
    try:
        server.wait_ready(60)
        set_faults(faults, break_loop=True)
        codes = []
        for i in range(4):  # three restarts, then dead
            response = httpx.post(f"{server.url}/v1/classify", json={"model": "clf", "inputs": f"x{i}"}, timeout=30)
            codes.append(response.status_code)
        assert codes == [503] * 4, codes
        assert metric(server, "electra_batcher_restarts_total", model="clf") == 3
        assert httpx.get(f"{server.url}/health/live", timeout=5).status_code == 503
        assert httpx.get(f"{server.url}/v2/health/live", timeout=5).status_code == 503
        assert httpx.get(f"{server.url}/health/ready", timeout=5).status_code == 503
    finally:
        set_faults(faults)
        assert server.stop() == 0, server.log()[-3000:]
