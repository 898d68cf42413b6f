"""What the image test needs around it: a Docker daemon, a base image and a torch index.

Where an image registry is reachable the real `python:3.11-slim-bookworm` and PyTorch's CPU index
are used. Where none is (this project's CI reaches only package registries), the daemon is started
here with no bridge network and no iptables changes (every build and container on the host network),
the base is made from Debian's packages (standin_base.sh) and the CPU torch wheel that pip here finds
is served to the build on loopback as a small package index.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import shutil
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
STANDIN_TAG = "electra-serve-test/python:3.11-slim-bookworm"
REAL_BASE = "python:3.11-slim-bookworm"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# The index's address is a build argument and part of the build cache's key: the same port every run
# lets a second build on one machine reuse the export stage (any free port when this one is taken).
STABLE_INDEX_PORT = 38917
# Kept between runs on one machine, so that a second run reuses the base and the build cache.
DATA_ROOT = Path(os.environ.get("ELECTRA_TEST_DOCKER_ROOT", "/var/lib/electra-serve-test-docker"))


class HostToolsMissing(RuntimeError):
    """The image test cannot run here; the message says what to install (it fails, never skips)."""


@dataclass
class Docker:
    client: str
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.client, *args], capture_output=True, text=True, timeout=timeout, env=self.env, check=False
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args[:3])} ... exited {result.returncode}:\n{result.stderr[-3000:]}")
        return result

    def answers(self) -> bool:
        try:
            return self.run("info", "--format", "{{.ServerVersion}}", timeout=20, check=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False


def _client() -> str:
    # Debian's client matches Debian's daemon; a newer client elsewhere on PATH may route builds to a
    # buildx plugin that is not installed.
    for candidate in ("/usr/bin/docker", shutil.which("docker")):
        if candidate and Path(candidate).exists():
            return candidate
    raise HostToolsMissing("no docker client: apt-get install docker.io (tests/install-host-tools.sh)")


@contextlib.contextmanager
def docker_daemon() -> Iterator[Docker]:
    """A daemon that answers: the one DOCKER_HOST or the default socket names, else one started here."""
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    existing = Docker(_client(), env)
    if existing.answers():
        yield existing
        return
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    if not Path(dockerd).exists():
        raise HostToolsMissing("no dockerd and no running Docker daemon: apt-get install docker.io")
    if os.geteuid() != 0:
        raise HostToolsMissing("no running Docker daemon, and starting one needs root")
    run_dir = Path(tempfile.mkdtemp(prefix="esd-", dir="/tmp"))  # short: unix socket paths are limited
    DATA_ROOT.mkdir(parents=True, exist_ok=True)
    socket = run_dir / "docker.sock"
    log = open(run_dir / "dockerd.log", "w")  # noqa: SIM115 - the daemon writes it for its lifetime
    process = subprocess.Popen(
        [dockerd, "--bridge=none", "--iptables=false", "--ip6tables=false", f"--host=unix://{socket}",
         f"--data-root={DATA_ROOT}", f"--exec-root={run_dir / 'exec'}", f"--pidfile={run_dir / 'docker.pid'}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    docker = Docker(_client(), {**env, "DOCKER_HOST": f"unix://{socket}"})
    try:
        deadline = time.monotonic() + 60
        while not docker.answers():
            if process.poll() is not None or time.monotonic() > deadline:
                raise HostToolsMissing(f"dockerd did not start:\n{(run_dir / 'dockerd.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield docker
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        shutil.rmtree(run_dir, ignore_errors=True)


def base_image(docker: Docker) -> str:
    """The real base where a registry answers; the stand-in (made once per machine) where none does."""
    if docker.run("pull", REAL_BASE, timeout=300, check=False).returncode == 0:
        return REAL_BASE
    if docker.run("image", "inspect", STANDIN_TAG, check=False).returncode == 0:
        return STANDIN_TAG
    if shutil.which("debootstrap") is None:
        raise HostToolsMissing("no image registry and no debootstrap to make a base: apt-get install debootstrap")
    result = subprocess.run(
        ["bash", str(HERE / "standin_base.sh"), STANDIN_TAG],
        capture_output=True, text=True, timeout=900, env=docker.env, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise HostToolsMissing(f"making the stand-in base failed:\n{result.stderr[-3000:]}")
    return STANDIN_TAG


def _reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):
        return False


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def torch_index(version: str, scratch: Path) -> Iterator[str]:
    """PyTorch's CPU index where it answers; else torch and what it needs, as pip here finds them, in a
    PEP 503 index on loopback (the build runs on the host network and reaches it)."""
    if _reachable(f"{TORCH_CPU_INDEX}/torch/"):
        yield TORCH_CPU_INDEX
        return
    wheels = scratch / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", f"torch=={version}", "--only-binary=:all:", "-d", str(wheels)],
        check=True, capture_output=True, timeout=900,
    )  # fmt: skip
    simple = scratch / "simple"
    for wheel in wheels.glob("*.whl"):
        project = simple / re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
        project.mkdir(parents=True, exist_ok=True)
        wheel.rename(project / wheel.name)
        with open(project / "index.html", "a") as page:
            page.write(f'<a href="{wheel.name}">{wheel.name}</a>\n')
    handler = lambda *args: _Quiet(*args, directory=str(simple))  # noqa: E731
    try:
        server = socketserver.ThreadingTCPServer(("127.0.0.1", STABLE_INDEX_PORT), handler)
    except OSError:
        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    with server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/"
        finally:
            server.shutdown()
