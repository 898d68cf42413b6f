"""The `cpu` image, built from this repository's Dockerfile and served, as a user runs it: as its
own non-root user on a read-only root, the README's answers, a HEALTHCHECK that follows flags given
after the image name, `docker stop` with work in flight, and models exported by another user.

Everything runs on the host network, servers bound to 127.0.0.1. Where the host lacks Docker or
cannot make a base image this fails with what to install: it never skips.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.deploy.image.docker_host import Docker, base_image, docker_daemon, torch_index
from tests.e2e.conftest import free_port

ROOT = Path(__file__).resolve().parents[3]
TAG = "electra-serve-test:cpu"
USER_ID = "10001"

pytestmark = pytest.mark.timeout(1800)


@dataclass
class Built:
    docker: Docker
    tag: str
    build_s: float
    size_bytes: int


@pytest.fixture(scope="module")
def image() -> Iterator[Built]:
    torch_version = re.search(r"^ARG TORCH_VERSION=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert torch_version is not None
    with docker_daemon() as docker, tempfile.TemporaryDirectory() as scratch:
        base = base_image(docker)
        with torch_index(torch_version.group(1), Path(scratch)) as index:
            started = time.monotonic()
            docker.run(
                "build", "--network", "host", "--target", "cpu", "--build-arg", f"PYTHON_IMAGE={base}",
                "--build-arg", f"TORCH_INDEX_URL={index}", "-t", TAG, str(ROOT), timeout=1500,
            )  # fmt: skip
            build_s = time.monotonic() - started
        size = int(docker.run("image", "inspect", "-f", "{{.Size}}", TAG).stdout)
        print(f"\nimage {TAG}: built in {build_s:.0f} s on {base}, {size / 1e6:.0f} MB")
        yield Built(docker, TAG, build_s, size)


@dataclass
class Container:
    docker: Docker
    name: str
    http_port: int
    grpc_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def logs(self) -> str:
        result = self.docker.run("logs", self.name, check=False)
        return result.stdout + result.stderr

    def inspect(self, template: str) -> str:
        return self.docker.run("inspect", "-f", template, self.name).stdout.strip()

    def wait_ready(self, timeout_s: float = 300) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.inspect("{{.State.Running}}") != "true":
                raise RuntimeError(f"container exited {self.inspect('{{.State.ExitCode}}')}:\n{self.logs()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"not ready after {timeout_s} s:\n{self.logs()[-3000:]}")


@pytest.fixture
def run_container(image: Built) -> Iterator[Callable[..., Container]]:
    names: list[str] = []

    def run(*server_args: str, docker_args: tuple[str, ...] = (), tag: str | None = None) -> Container:
        name = f"electra-test-{len(names)}-{time.monotonic_ns()}"
        http_port, grpc_port = free_port(), free_port()
        names.append(name)
        image.docker.run(
            "run", "-d", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp",
            "--health-interval", "1s", "--health-start-period", "120s", *docker_args, tag or image.tag,
            "--host", "127.0.0.1", "--http-port", str(http_port), "--grpc-port", str(grpc_port), *server_args,
        )  # fmt: skip
        return Container(image.docker, name, http_port, grpc_port)

    yield run
    for name in names:
        image.docker.run("rm", "-f", name, check=False)


def test_the_image_carries_what_it_serves_and_no_build_tools(image: Built) -> None:
    script = (
        "import pathlib, sys; "
        "venv = sorted(p.name for p in pathlib.Path('/opt/venv/bin').iterdir()); "
        "site = sorted(p.name for p in next(pathlib.Path('/opt/venv/lib').glob('python3*/site-packages')).iterdir()); "
        "models = sorted(str(p.relative_to('/models')) for p in pathlib.Path('/models').rglob('*.onnx')); "
        "print(__import__('json').dumps({'bin': venv, 'site': site, 'models': models, "
        "'wheels': pathlib.Path('/wheels').exists()}))"
    )
    found = json.loads(image.docker.run("run", "--rm", "--entrypoint", "python", image.tag, "-c", script).stdout)
    assert not [name for name in found["bin"] if name.startswith(("pip", "easy_install"))], found["bin"]
    assert not [name for name in found["site"] if name.split("-")[0] in ("pip", "setuptools", "wheel")], found["site"]
    assert not found["wheels"], "the wheel mount left an empty /wheels behind"
    # The CPU image serves fp32: the other variants are not shipped (deploy/README: CPU_PRECISIONS).
    assert len(found["models"]) == 4 and all(name.endswith("model.fp32.onnx") for name in found["models"]), found
    assert "torch" not in found["site"] and "transformers" not in found["site"]
    user = image.docker.run("image", "inspect", "-f", "{{.Config.User}}", image.tag).stdout.strip()
    assert user.split(":")[0] == USER_ID


def test_the_image_serves_the_readme_as_its_own_user_on_a_read_only_root(
    run_container: Callable[..., Container],
) -> None:
    container = run_container()
    ready_s = container.wait_ready()
    print(f"\nready in {ready_s:.1f} s")
    assert container.docker.run("exec", container.name, "id", "-u").stdout.strip() == USER_ID
    assert container.inspect("{{.HostConfig.ReadonlyRootfs}}") == "true"

    readme = (ROOT / "README.md").read_text()
    lines = [line for line in readme.splitlines() if re.match(r"curl -s localhost:8000/v1/\w+ ", line)]
    assert len(lines) == 4, lines
    answers = {}
    for line in lines:
        argv = shlex.split(line.replace("localhost:8000", f"127.0.0.1:{container.http_port}"))
        answer = subprocess.run([*argv, "-w", "\n%{http_code}"], capture_output=True, text=True, timeout=60)
        body, status = answer.stdout.rsplit("\n", 1)
        assert status == "200", (line, body)
        answers[argv[2].rsplit("/", 1)[1]] = json.loads(body)
    # The README's words: "Great film!" is POSITIVE, the pair NEGATIVE, "Who?" is "Clark".
    assert [answer[0]["label"] for answer in answers["classify"]] == ["POSITIVE", "NEGATIVE"], answers["classify"]
    assert answers["qa"]["answer"] == "Clark", answers["qa"]

    # gRPC health follows readiness within its 0.5 s poll.
    with grpc.insecure_channel(f"127.0.0.1:{container.grpc_port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert any(reply.status == health_pb2.HealthCheckResponse.SERVING for reply in watch)

    # The ports came from flags after the image name: the HEALTHCHECK follows them all the same.
    deadline = time.monotonic() + 60
    while (health := container.inspect("{{.State.Health.Status}}")) != "healthy":
        assert health == "starting" and time.monotonic() < deadline, container.inspect("{{json .State.Health}}")
        time.sleep(0.5)


def _queued(container: Container, model: str) -> float:
    text = httpx.get(f"{container.url}/metrics", timeout=5).text
    found = re.search(rf'^electra_queue_depth{{[^}}]*model="{model}"[^}}]*}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_docker_stop_answers_work_in_flight_and_exits_0(run_container: Callable[..., Container]) -> None:
    """Eight requests known to be queued when `docker stop` begins are all answered; requests sent
    while it drains get 503 or find the port closed; the container exits 0."""
    container = run_container(
        "--models", "demo-classify", "--max-queue-delay-ms", "3000", "--max-batch-size", "64",
        "--drain-timeout-s", "20",
    )  # fmt: skip
    container.wait_ready()
    accepted: list[int] = []
    late: Counter[str] = Counter()
    stopped = threading.Event()

    def queued_request(index: int) -> None:
        reply = httpx.post(f"{container.url}/v1/classify", json={"inputs": f"accepted {index}"}, timeout=60)
        accepted.append(reply.status_code)

    def late_client() -> None:
        # Sent after the stop began: never accepted work, so a refusal in any form is right, and a
        # reset connection is the kernel's answer for one still in the closed listener's backlog.
        while not stopped.is_set():
            try:
                late[
                    str(httpx.post(f"{container.url}/v1/classify", json={"inputs": "late"}, timeout=60).status_code)
                ] += 1
            except httpx.ConnectError:
                late["refused"] += 1
            except (httpx.RemoteProtocolError, httpx.ReadError):
                late["reset before read"] += 1
            time.sleep(0.05)

    threads = [threading.Thread(target=queued_request, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while _queued(container, "demo-classify") < 8:  # the 3 s queue delay holds them
        assert time.monotonic() < deadline, "the requests never queued"
        time.sleep(0.02)
    started = time.monotonic()
    stopper = threading.Thread(target=lambda: container.docker.run("stop", "-t", "30", container.name))
    stopper.start()
    latecomer = threading.Thread(target=late_client)
    time.sleep(0.1)
    latecomer.start()
    stopper.join(60)
    stop_s = time.monotonic() - started
    stopped.set()
    latecomer.join(60)
    for thread in threads:
        thread.join(60)
    print(f"\ndocker stop with 8 queued requests: {stop_s:.1f} s, accepted {accepted}, late {dict(late)}")
    assert accepted == [200] * 8, accepted
    assert container.inspect("{{.State.ExitCode}}") == "0", container.logs()[-3000:]
    assert "draining" in container.logs()
    assert set(late) <= {"200", "503", "refused", "reset before read"}, late
    assert stop_s < 20


def test_a_model_exported_as_root_is_served_read_only_as_the_images_user(
    run_container: Callable[..., Container], export_model: Callable[..., Path], tmp_path: Path
) -> None:
    """deploy/README's own-model flow where exporting and serving users differ: exported here as root
    (the folder staged 0700 by mkdtemp), mounted read-only, served as uid 10001."""
    source = export_model("classify", labels=["no", "yes"], seed=7)
    repository = tmp_path / "repository"
    repository.mkdir(mode=0o755)
    shutil.copytree(source, repository / source.name, copy_function=shutil.copy2)
    (repository / source.name).chmod(source.stat().st_mode)  # as the exporter left it
    assert source.stat().st_mode & 0o005 == 0o005, oct(source.stat().st_mode)
    tmp_path.chmod(0o755)
    container = run_container(docker_args=("-v", f"{repository}:/models:ro"))
    container.wait_ready()
    reply = httpx.post(f"{container.url}/v1/classify", json={"inputs": "fine"}, timeout=30)
    assert reply.status_code == 200 and reply.json()[0]["label"] in ("no", "yes"), reply.text

    # A folder the image's user cannot read: one line naming it and the user, exit 1.
    (repository / source.name).chmod(0o700)
    refused = run_container(docker_args=("-v", f"{repository}:/models:ro"))
    deadline = time.monotonic() + 120
    while refused.inspect("{{.State.Running}}") == "true":
        assert time.monotonic() < deadline, refused.logs()[-3000:]
        time.sleep(0.2)
    assert refused.inspect("{{.State.ExitCode}}") == "1"
    assert f"cannot read /models/{source.name} as uid {USER_ID} (electra)" in refused.logs()


def test_the_own_image_recipe_builds_and_serves(
    image: Built, run_container: Callable[..., Container], export_model: Callable[..., Path], tmp_path: Path
) -> None:
    """deploy/README's "an image of your own", run as written from a folder holding model-repository/."""
    source = export_model("classify", labels=["no", "yes"], seed=7)
    shutil.copytree(source, tmp_path / "model-repository" / "mine")
    recipe = (ROOT / "deploy" / "own-model.Dockerfile").read_text()
    (tmp_path / "Dockerfile").write_text(recipe)
    tag = "electra-serve-test:own"
    image.docker.run(
        "build", "--network", "host", "--build-arg", f"BASE={image.tag}", "-t", tag, str(tmp_path), timeout=600
    )
    container = run_container(tag=tag)
    container.wait_ready()
    models = httpx.get(f"{container.url}/v1/models", timeout=10).json()["models"]
    assert [model["name"] for model in models] == ["mine"]
