"""electra-serve-probe, the image's HEALTHCHECK, against real servers on loopback: it follows the
port the server really bound (also one chosen by the kernel), TLS, API keys on probes and
--workers, reads not ready as failure, and says in one line why it failed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.certs import Authority
from tests.e2e.conftest import ROOT, ServerProcess, start_server

KEY = "probe-key-5b1e0c7d"


def run_probe(state_file: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.probe", "--state-file", str(state_file), *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env=env,
    )


def wait_healthy(handle: ServerProcess, state_file: Path, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if handle.process.poll() is not None:
            raise RuntimeError(f"server exited:\n{handle.log()[-3000:]}")
        result = run_probe(state_file)
        if result.returncode == 0:
            return
        last = result.stderr
        time.sleep(0.3)
    raise RuntimeError(f"never healthy: {last}\n{handle.log()[-3000:]}")


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, export_model: Callable[..., Path]) -> Path:
    return export_model("classify", labels=["n", "p"], seed=41).parent


def test_the_probe_follows_tls_keys_on_probes_and_a_kernel_chosen_port(repository: Path, tmp_path: Path) -> None:
    pki = Authority(tmp_path / "pki")
    server = pki.issue("server", server=True)
    (tmp_path / "keys.txt").write_text(f"# the first key serves the probe\n{KEY}\n")
    state_file = tmp_path / "run" / "state.json"
    assert run_probe(state_file).stderr.startswith(f"no state file at {state_file}")
    handle = start_server(
        repository, tmp_path / "server.log", "--http-port", "0", "--tls-cert", str(server.cert),
        "--tls-key", str(server.key), "--api-keys-file", str(tmp_path / "keys.txt"), "--auth-probes",
        "--state-file", str(state_file),
    )  # fmt: skip
    try:
        wait_healthy(handle, state_file)
        state = json.loads(state_file.read_text())
        port = int(state["http"].rsplit(":", 1)[1])
        assert state["http"].startswith("https://127.0.0.1:") and port not in (0, handle.http_port)
        assert run_probe(state_file, "/health/live").returncode == 0
        # The same probe with a wrong key, or none, is refused: it really presented the file's key.
        (tmp_path / "wrong-keys.txt").write_text("another-key-entirely\n")
        for keys in (str(tmp_path / "wrong-keys.txt"), None):
            altered = tmp_path / "altered-state.json"
            altered.write_text(json.dumps({**state, "probe_api_keys_file": keys}))
            refused = run_probe(altered)
            assert refused.returncode == 1 and "HTTP 401" in refused.stderr, refused.stderr
    finally:
        assert handle.stop() == 0, handle.log()[-3000:]
    assert not state_file.exists()
    gone = run_probe(state_file)
    assert gone.returncode == 1 and "no state file" in gone.stderr


def test_the_probe_follows_workers_and_fails_once_the_server_is_gone(repository: Path, tmp_path: Path) -> None:
    state_file = tmp_path / "state.json"
    handle = start_server(repository, tmp_path / "server.log", "--workers", "2", "--state-file", str(state_file))
    try:
        wait_healthy(handle, state_file)
        assert json.loads(state_file.read_text())["http"] == f"http://127.0.0.1:{handle.http_port}"
        handle.process.kill()  # no chance to remove its file: the probe must notice the pid is gone
        handle.process.wait(30)
        result = run_probe(state_file)
        assert result.returncode == 1 and "is not running" in result.stderr, result.stderr
    finally:
        handle.stop()
        subprocess.run(["pkill", "-KILL", "-f", str(state_file)], check=False)
