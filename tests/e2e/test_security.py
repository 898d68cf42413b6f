"""API keys, TLS and mutual TLS on both protocols, against real servers on loopback, with
certificates made in the test: who gets in, who does not, what they are told, and rotation of keys
and certificates without a restart or a dropped connection."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from proto.electra.v1 import electra_pb2 as pb
from proto.electra.v1 import electra_pb2_grpc as pb_grpc
from tests.certs import Authority, Issued
from tests.e2e.conftest import ServerProcess, start_server

KEY_A, KEY_B = "key-alpha-4f0c2f1d9e", "key-bravo-81b2c7aa03"
MODEL = "cls"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, export_model: Callable[..., Path]) -> Path:
    source = export_model("classify", labels=["n", "p"], seed=41)
    root = tmp_path_factory.mktemp("secure-models")
    shutil.copytree(source, root / MODEL)
    manifest = (root / MODEL / "manifest.json").read_text().replace(f'"name": "{source.name}"', f'"name": "{MODEL}"')
    (root / MODEL / "manifest.json").write_text(manifest)
    return root


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    directory = tmp_path_factory.mktemp("pki")
    ca = Authority(directory)
    stranger = Authority(directory / "other", name="not-our-ca")
    return {
        "ca": ca,
        "server": ca.issue("server", server=True),
        "client": ca.issue("client", server=False),
        "stranger": stranger.issue("stranger", server=False),
        "dir": directory,
    }


def client_context(ca: Path, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    return context


def wait_ready_tls(handle: ServerProcess, ca: Path, cert: tuple[Path, Path] | None = None) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if handle.process.poll() is not None:
            raise RuntimeError(handle.log()[-3000:])
        try:
            url = f"https://127.0.0.1:{handle.http_port}/health/ready"
            if httpx.get(url, verify=client_context(ca, cert), timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"not ready:\n{handle.log()[-3000:]}")


@pytest.fixture(scope="module")
def keyed(
    repository: Path, pki: dict[str, object], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """TLS on both ports and API keys; certificate and key files in a directory that the test rewrites."""
    secrets = tmp_path_factory.mktemp("secrets")
    server: Issued = pki["server"]  # type: ignore[assignment]
    shutil.copy(server.cert, secrets / "tls.crt")
    shutil.copy(server.key, secrets / "tls.key")
    (secrets / "keys.txt").write_text(f"# rotated by the test\n{KEY_A}\n\n")
    handle = start_server(
        repository, secrets / "server.log",
        "--api-keys-file", str(secrets / "keys.txt"), "--tls-cert", str(secrets / "tls.crt"),
        "--tls-key", str(secrets / "tls.key"), "--secrets-poll-secs", "0.2", "--model-control-mode", "explicit",
        "--load-model", "*",
    )  # fmt: skip
    handle.extra_env["secrets"] = str(secrets)
    try:
        wait_ready_tls(handle, pki["ca"].path)  # type: ignore[union-attr]
        yield handle
    finally:
        assert handle.stop() == 0, handle.log()[-3000:]


def https(
    handle: ServerProcess, pki: dict[str, object], key: str | None = None, cert: tuple[Path, Path] | None = None
) -> httpx.Client:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    verify = client_context(pki["ca"].path, cert)  # type: ignore[union-attr]
    return httpx.Client(base_url=f"https://127.0.0.1:{handle.http_port}", verify=verify, headers=headers, timeout=30)


def secure_channel(handle: ServerProcess, pki: dict[str, object], client: Issued | None = None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki["ca"].path.read_bytes(),  # type: ignore[union-attr]
        private_key=client.key.read_bytes() if client else None,
        certificate_chain=client.cert.read_bytes() if client else None,
    )
    return grpc.secure_channel(handle.grpc_target, credentials)


def test_rest_needs_a_key_except_for_probes(keyed: ServerProcess, pki: dict[str, object]) -> None:
    body = {"model": MODEL, "inputs": "hello"}
    with https(keyed, pki) as anonymous, https(keyed, pki, KEY_A) as trusted, https(keyed, pki, "guess") as guesser:
        refused = anonymous.post("/v1/classify", json=body)
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
        assert set(refused.json()) == {"error"}
        wrong = guesser.post("/v1/classify", json=body)
        assert wrong.status_code == 401 and wrong.json() == refused.json()  # nothing that helps a guesser
        assert anonymous.get("/v1/models").status_code == 401
        assert anonymous.post("/v2/repository/models/cls/load").status_code == 401  # control needs a key
        assert anonymous.get("/docs").status_code == 401
        for probe in ("/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready", "/metrics"):
            assert anonymous.get(probe).status_code == 200, probe
        answered = trusted.post("/v1/classify", json=body)
        assert answered.status_code == 200 and answered.headers["x-request-id"]
        assert trusted.post("/v2/repository/models/cls/load").status_code == 200
    with pytest.raises(httpx.HTTPError):  # plain HTTP on a TLS port
        httpx.get(f"http://127.0.0.1:{keyed.http_port}/health/live", timeout=5)
    assert KEY_A not in keyed.log() and "guess" not in keyed.log()  # keys are never logged


def test_grpc_needs_a_key_except_for_health(keyed: ServerProcess, pki: dict[str, object]) -> None:
    with secure_channel(keyed, pki) as channel:
        stub = pb_grpc.ElectraServiceStub(channel)
        request = pb.ClassifyRequest(model=MODEL, inputs=[pb.ClassifyInput(text="hello")])
        with pytest.raises(grpc.RpcError) as caught:
            stub.Classify(request, timeout=30)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as caught:
            stub.Classify(request, timeout=30, metadata=(("authorization", "Bearer guess"),))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        responses = stub.Stream(iter([pb.StreamRequest(id="1", classify=request)]), timeout=30)
        with pytest.raises(grpc.RpcError) as caught:
            list(responses)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        health = health_pb2_grpc.HealthStub(channel)
        assert (
            health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        )
        answer, call = stub.Classify.with_call(request, timeout=30, metadata=(("authorization", f"Bearer {KEY_A}"),))
        assert answer.results[0].labels and answer.model_version == "1"
        assert dict(call.trailing_metadata())["x-request-id"]


def test_keys_rotate_without_a_restart(keyed: ServerProcess, pki: dict[str, object]) -> None:
    keys = Path(keyed.extra_env["secrets"]) / "keys.txt"
    body = {"model": MODEL, "inputs": "rotation"}
    staged = keys.with_suffix(".new")
    staged.write_text(f"{KEY_B}\n")
    staged.replace(keys)  # an atomic swap, as a Secret update is
    try:
        with https(keyed, pki, KEY_B) as new, https(keyed, pki, KEY_A) as old:
            deadline = time.monotonic() + 10
            while new.post("/v1/classify", json=body).status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert new.post("/v1/classify", json=body).status_code == 200
            assert old.post("/v1/classify", json=body).status_code == 401
    finally:
        keys.write_text(f"{KEY_A}\n")
        deadline = time.monotonic() + 10
        with https(keyed, pki, KEY_A) as back:
            while back.post("/v1/classify", json=body).status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.1)


def peer_serial(port: int, ca: Path) -> int:
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        from cryptography import x509

        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def test_certificates_rotate_without_dropping_connections(keyed: ServerProcess, pki: dict[str, object]) -> None:
    ca: Authority = pki["ca"]  # type: ignore[assignment]
    secrets = Path(keyed.extra_env["secrets"])
    first: Issued = pki["server"]  # type: ignore[assignment]
    assert peer_serial(keyed.http_port, ca.path) == first.serial
    with https(keyed, pki, KEY_A) as kept, secure_channel(keyed, pki) as channel:
        assert kept.post("/v1/classify", json={"model": MODEL, "inputs": "before"}).status_code == 200
        stub = pb_grpc.ElectraServiceStub(channel)
        auth = (("authorization", f"Bearer {KEY_A}"),)
        stub.Classify(
            pb.ClassifyRequest(model=MODEL, inputs=[pb.ClassifyInput(text="before")]), metadata=auth, timeout=30
        )
        renewed = ca.issue("server-renewed", server=True)
        for source, name in ((renewed.cert, "tls.crt"), (renewed.key, "tls.key")):
            shutil.copy(source, secrets / f"{name}.new")
            (secrets / f"{name}.new").replace(secrets / name)
        deadline = time.monotonic() + 10
        while peer_serial(keyed.http_port, ca.path) != renewed.serial and time.monotonic() < deadline:
            time.sleep(0.1)
        assert peer_serial(keyed.http_port, ca.path) == renewed.serial  # new connections: the new certificate
        # Connections opened before the rotation go on working.
        assert kept.post("/v1/classify", json={"model": MODEL, "inputs": "after"}).status_code == 200
        stub.Classify(
            pb.ClassifyRequest(model=MODEL, inputs=[pb.ClassifyInput(text="after")]), metadata=auth, timeout=30
        )
    with secure_channel(keyed, pki) as fresh:  # a new gRPC connection trusts the renewed certificate too
        answer = pb_grpc.ElectraServiceStub(fresh).Classify(
            pb.ClassifyRequest(model=MODEL, inputs=[pb.ClassifyInput(text="fresh")]), metadata=auth, timeout=30
        )
        assert answer.results


@pytest.fixture(scope="module")
def mutual(
    repository: Path, pki: dict[str, object], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    server: Issued = pki["server"]  # type: ignore[assignment]
    log = tmp_path_factory.mktemp("mtls") / "server.log"
    handle = start_server(
        repository, log, "--tls-cert", str(server.cert), "--tls-key", str(server.key),
        "--tls-client-ca", str(pki["ca"].path),  # type: ignore[union-attr]
        "--state-file", str(log.with_name("state.json")),
    )  # fmt: skip
    client: Issued = pki["client"]  # type: ignore[assignment]
    try:
        wait_ready_tls(handle, pki["ca"].path, (client.cert, client.key))  # type: ignore[union-attr]
        yield handle
    finally:
        assert handle.stop() == 0, handle.log()[-3000:]


def test_the_health_probe_presents_its_client_certificate(mutual: ServerProcess, pki: dict[str, object]) -> None:
    """electra-serve-probe under mutual TLS: the server's own certificate is not one for clients,
    so the image's HEALTHCHECK is given one (ELECTRA_PROBE_CERT/KEY), as deploy/'s mtls component is."""
    client: Issued = pki["client"]  # type: ignore[assignment]
    state = str(mutual.log_path.with_name("state.json"))
    command = [sys.executable, "-m", "server.probe", "--state-file", state]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 1 and "127.0.0.1" in refused.stderr, refused.stderr
    env = {**os.environ, "ELECTRA_PROBE_CERT": str(client.cert), "ELECTRA_PROBE_KEY": str(client.key)}
    healthy = subprocess.run(command, capture_output=True, text=True, timeout=30, env=env)
    assert healthy.returncode == 0, healthy.stderr


def test_mutual_tls_refuses_clients_without_a_trusted_certificate(
    mutual: ServerProcess, pki: dict[str, object]
) -> None:
    client: Issued = pki["client"]  # type: ignore[assignment]
    stranger: Issued = pki["stranger"]  # type: ignore[assignment]
    body = {"model": MODEL, "inputs": "mutual"}
    with https(mutual, pki, cert=(client.cert, client.key)) as trusted:
        assert trusted.post("/v1/classify", json=body).status_code == 200
    for cert in (None, (stranger.cert, stranger.key)):
        with pytest.raises(httpx.HTTPError), https(mutual, pki, cert=cert) as refused:
            refused.get("/health/live")
    request = pb.ClassifyRequest(model=MODEL, inputs=[pb.ClassifyInput(text="mutual")])
    with secure_channel(mutual, pki, client) as channel:
        assert pb_grpc.ElectraServiceStub(channel).Classify(request, timeout=30).results
    for who in (None, stranger):
        with secure_channel(mutual, pki, who) as channel, pytest.raises(grpc.RpcError) as caught:
            pb_grpc.ElectraServiceStub(channel).Classify(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
