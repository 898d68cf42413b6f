"""Model versions and the repository API on a real server: a model reloaded with a new version 20
times under a steady closed loop of requests (nothing fails, every answer comes from a version
that was serving, memory comes back), a broken version that leaves the old one serving, poll
mode picking up a version renamed in, and tritonclient's repository calls on HTTP and gRPC."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from tests.e2e.conftest import ServerProcess, start_server

MODEL = "m"
RELOADS = 20


def add_version(repository: Path, source: Path, version: int) -> Path:
    """Version `version` of MODEL: the source model's files hard-linked (no copies), its manifest
    renamed, written beside and renamed in, as an export publishes."""
    target = repository / MODEL / str(version)
    staging = repository / MODEL / f".staging-{version}"
    staging.mkdir(parents=True)
    for item in source.iterdir():
        if item.name != "manifest.json":
            os.link(item, staging / item.name)
    manifest = json.loads((source / "manifest.json").read_text())
    manifest["name"] = MODEL
    manifest["source"]["revision"] = f"v{version}"
    (staging / "manifest.json").write_text(json.dumps(manifest))
    staging.rename(target)
    return target


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@dataclass
class ClosedLoop:
    """Clients that send requests back to back until stopped, recording every outcome."""

    url: str
    clients: int = 4
    outcomes: list[tuple[float, float, int, str]] = field(default_factory=list)  # (sent, answered, status, version)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _client(self, n: int) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as http:
            i = 0
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    response = http.post("/v1/classify", json={"model": MODEL, "inputs": f"text {n} {i}"})
                    status, version = response.status_code, response.headers.get("x-model-version", "")
                except httpx.HTTPError as exc:
                    status, version = 0, type(exc).__name__
                self.outcomes.append((sent, time.monotonic(), status, version))
                i += 1

    def __enter__(self) -> ClosedLoop:
        self._threads = [threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(self.clients)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


@pytest.fixture(scope="module")
def source_model(demo_repository: Path) -> Path:
    return demo_repository / "demo-classify"


@pytest.fixture
def explicit(tmp_path: Path, source_model: Path) -> Iterator[ServerProcess]:
    repository = tmp_path / "models"
    add_version(repository, source_model, 1)
    handle = start_server(
        repository, tmp_path / "server.log", "--model-control-mode", "explicit", "--load-model", MODEL,
        "--max-queue-delay-ms", "2", "--drain-timeout-s", "20",
    )  # fmt: skip
    try:
        handle.wait_ready()
        yield handle
    finally:
        assert handle.stop() == 0, handle.log()[-3000:]


def load(server: ServerProcess, name: str = MODEL) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/repository/models/{name}/load", json={}, timeout=120)


def test_twenty_reloads_under_load_lose_nothing_and_give_memory_back(
    explicit: ServerProcess, source_model: Path
) -> None:
    repository = explicit.repository
    retired_at: dict[int, float] = {}  # version -> when the reload that replaced it returned
    rss: list[int] = []
    with ClosedLoop(explicit.url) as loop:
        time.sleep(1)
        for version in range(2, RELOADS + 2):
            add_version(repository, source_model, version)
            response = load(explicit)
            assert response.status_code == 200, response.text
            retired_at[version - 1] = time.monotonic()
            # The older version's directory goes, as an operator keeping the last one would.
            shutil.rmtree(repository / MODEL / str(version - 1))
            rss.append(rss_kb(explicit.process.pid))
        time.sleep(0.5)
    outcomes = loop.outcomes
    failed = [o for o in outcomes if o[2] != 200]
    assert len(outcomes) > 100 and not failed, failed[:5]
    for sent, _, _, version in outcomes:
        # An answer comes from a version that was still serving when the request was sent.
        assert int(version) in range(1, RELOADS + 2)
        assert retired_at.get(int(version), float("inf")) >= sent, (sent, version)
    last = max(outcomes, key=lambda o: o[0])
    assert last[3] == str(RELOADS + 1)
    # Memory: each replaced version's sessions and batchers are released (within 10% of the first).
    assert rss[-1] <= rss[0] * 1.10, rss
    index = httpx.post(f"{explicit.url}/v2/repository/index", json={}, timeout=10).json()
    assert [(e["version"], e["state"]) for e in index if e["name"] == MODEL] == [(str(RELOADS + 1), "READY")]
    print(f"reloads {RELOADS}, requests {len(outcomes)}, failed {len(failed)}, rss kB first {rss[0]} last {rss[-1]}")


def test_a_broken_version_keeps_the_old_one_serving(explicit: ServerProcess, source_model: Path) -> None:
    broken = add_version(explicit.repository, source_model, 2)
    graph = broken / json.loads((broken / "manifest.json").read_text())["variants"]["fp32"]["file"]
    graph.unlink()
    graph.write_bytes(b"not an onnx graph")  # its sha256 no longer matches the manifest
    response = load(explicit)
    assert response.status_code == 400
    assert "version 2" in response.json()["error"] and "sha256" in response.json()["error"]
    served = httpx.post(f"{explicit.url}/v1/classify", json={"model": MODEL, "inputs": "still here"}, timeout=30)
    assert served.status_code == 200 and served.headers["x-model-version"] == "1"
    index = {e["version"]: e for e in httpx.post(f"{explicit.url}/v2/repository/index", timeout=10).json()}
    assert index["1"]["state"] == "READY"
    assert index["2"]["state"] == "UNAVAILABLE" and "sha256" in index["2"]["reason"]
    assert httpx.get(f"{explicit.url}/health/ready", timeout=10).status_code == 200


def test_tritonclient_repository_calls_on_http_and_grpc(explicit: ServerProcess, source_model: Path) -> None:
    add_version(explicit.repository, source_model, 2)
    http = thttp.InferenceServerClient(f"127.0.0.1:{explicit.http_port}")
    grpc_client = tgrpc.InferenceServerClient(explicit.grpc_target)
    try:
        index = http.get_model_repository_index()
        assert {(e["name"], e.get("version"), e.get("state")) for e in index} >= {(MODEL, "1", "READY")}
        http.load_model(MODEL)  # version 2 replaces 1 (latest:1)
        assert http.is_model_ready(MODEL, "2") and not http.is_model_ready(MODEL, "1")
        grpc_index = grpc_client.get_model_repository_index(as_json=True)["models"]
        assert [m["version"] for m in grpc_index if m["name"] == MODEL and m.get("state") == "READY"] == ["2"]
        grpc_client.unload_model(MODEL)
        assert not http.is_model_ready(MODEL)
        text = thttp.InferInput("TEXT", [1, 1], "BYTES")
        text.set_data_from_numpy(np.array([[b"unloaded"]], dtype=object))
        with pytest.raises(InferenceServerException, match="not loaded"):
            http.infer(MODEL, [text])
        grpc_client.load_model(MODEL)
        assert grpc_client.is_model_ready(MODEL) and grpc_client.get_model_metadata(MODEL).versions == ["2"]
        http.unload_model(MODEL)
        http.load_model(MODEL)
        assert http.is_model_ready(MODEL)
        with pytest.raises(InferenceServerException, match="not in the repository"):
            http.load_model("no-such-model")
    finally:
        http.close()
        grpc_client.close()


def test_control_is_refused_unless_explicit(tmp_path: Path, source_model: Path) -> None:
    repository = tmp_path / "models"
    add_version(repository, source_model, 1)
    handle = start_server(repository, tmp_path / "server.log", "--model-control-mode", "poll",
                          "--repository-poll-secs", "0.5")  # fmt: skip
    try:
        handle.wait_ready()
        refused = load(handle)
        assert refused.status_code == 400 and "--model-control-mode explicit" in refused.json()["error"]
        # Poll mode: a new version renamed into the repository is picked up and served.
        add_version(repository, source_model, 2)
        deadline = time.monotonic() + 60
        version = ""
        while time.monotonic() < deadline and version != "2":
            response = httpx.post(f"{handle.url}/v1/classify", json={"model": MODEL, "inputs": "x"}, timeout=30)
            assert response.status_code == 200, response.text
            version = response.headers["x-model-version"]
            time.sleep(0.2)
        assert version == "2"
    finally:
        assert handle.stop() == 0, handle.log()[-3000:]
