"""Static checks of the Dockerfile, .dockerignore and deploy/ (kustomize, compose, Prometheus, Grafana,
KServe).

No Docker engine or cluster is needed: files are parsed and cross-checked against each other and
against the public interface, docs/REFERENCE.md (flags, ports, probe paths, metric names). The
KServe objects are validated against KServe's own CRD schemas, vendored in tests/data/kserve. When
`kubectl` is on the PATH the overlays are also rendered with `kubectl kustomize` and the rendered
objects are checked; without it those tests are skipped, and say so.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from copy import deepcopy
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
BASE = K8S / "base"
OVERLAYS = ("cpu", "gpu")
COMPONENTS = K8S / "components"
COMPOSE = DEPLOY / "compose" / "docker-compose.yaml"
COMPOSE_GPU = DEPLOY / "compose" / "docker-compose.gpu.yaml"
PROMETHEUS = DEPLOY / "compose" / "prometheus.yml"
DASHBOARD = DEPLOY / "dashboards" / "electra-serve.json"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
KSERVE = DEPLOY / "kserve"
KSERVE_CRDS = ROOT / "tests" / "data" / "kserve"
TLS = COMPONENTS / "tls"
MTLS = COMPONENTS / "mtls"
API_KEYS = COMPONENTS / "api-keys"
# YAML in deploy/ that no kustomization lists, on purpose (applied on its own, see its comment).
UNLISTED = {COMPONENTS / "model-pvc" / "export-job.yaml"}

HTTP_PORT = 8000
GRPC_PORT = 8001
SERVER_CONTAINER = "electra-serve"
# KServe merges an InferenceService's predictor.model into the runtime container of this name.
KSERVE_CONTAINER = "kserve-container"
# Kubernetes' terminationGracePeriodSeconds when a pod sets none (KServe's objects leave it unset).
DEFAULT_GRACE_S = 30

# docs/REFERENCE.md §1.2: the core electra-serve flags, each with its ELECTRA_<FLAG_IN_CAPS> twin.
REFERENCE_FLAGS = (
    "model-repository",
    "models",
    "host",
    "http-port",
    "grpc-port",
    "device",
    "precision",
    "max-batch-size",
    "max-batch-tokens",
    "max-queue-delay-ms",
    "max-queue-size",
    "drain-timeout-s",
)
# Further server flags that the deployments tune; checked against `electra-serve --help`.
EXTRA_FLAGS = ("intra-op-threads", "state-file")
# docs/REFERENCE.md §1.2: the flags of security, model lifecycle and the front end, added after the
# first ones. deploy/ sets some of them (TLS, API keys, poll mode); each is checked against
# `electra-serve --help` on its own (test_cli_knows_the_later_flags).
LATER_FLAGS = (
    "api-keys-file",
    "tls-cert",
    "tls-key",
    "tls-client-ca",
    "model-control-mode",
    "repository-poll-secs",
    "load-model",
    "workers",
)
ALL_FLAGS = REFERENCE_FLAGS + EXTRA_FLAGS + LATER_FLAGS
REFERENCE_ENV = {"ELECTRA_" + f.upper().replace("-", "_"): f for f in ALL_FLAGS}

# docs/REFERENCE.md §6.
HISTOGRAMS = {
    "electra_request_duration_seconds",
    "electra_queue_duration_seconds",
    "electra_inference_duration_seconds",
    "electra_batch_size",
    "electra_batch_tokens",
    "electra_padding_ratio",
}
OTHER_METRICS = {
    "electra_requests_total",
    "electra_queue_depth",
    "electra_model_ready",
    "electra_dropped_total",
}


# ---------------------------------------------------------------------------------------------
# helpers


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml"})


def load_docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def load_one(path: Path) -> Any:
    docs = load_docs(path)
    assert len(docs) == 1, f"{path}: expected one YAML document, got {len(docs)}"
    return docs[0]


def kustomization_dirs() -> list[Path]:
    return sorted(p.parent for p in DEPLOY.rglob("kustomization.yaml"))


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def by_kind(docs: list[Any], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[Any], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def server_container(deployment: dict[str, Any]) -> dict[str, Any]:
    return pod_server_container(deployment["spec"]["template"]["spec"])


def pod_server_container(pod: dict[str, Any]) -> dict[str, Any]:
    named = [c for c in pod["containers"] if c["name"] == SERVER_CONTAINER]
    assert len(named) == 1, f"Deployment must have one container named {SERVER_CONTAINER}"
    return named[0]


def container_ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def resolve_port(port: int | str, ports: dict[str, int]) -> int:
    if isinstance(port, int):
        return port
    assert port in ports, f"port name {port!r} is not a container port ({sorted(ports)})"
    return ports[port]


def read_env_file(path: Path) -> dict[str, str]:
    """kustomize's env-file format: KEY=VALUE lines, # comments and blank lines skipped."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not KEY=VALUE: {line!r}"
        env[key] = value
    return env


def prestop_sleep_seconds(container: dict[str, Any]) -> int:
    pre = container["lifecycle"]["preStop"]
    if "sleep" in pre:  # the native sleep action (Kubernetes >= 1.30)
        return int(pre["sleep"]["seconds"])
    command = pre["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, f"preStop must be a plain sleep, got {command}"
    return int(command[1])


def kustomize_refs(kdir: Path) -> Iterator[tuple[str, Path]]:
    """Every path a kustomization (or component) names, with the field it came from."""
    k = load_one(kdir / "kustomization.yaml")
    for key in ("resources", "components", "patchesStrategicMerge"):
        for entry in k.get(key) or []:
            yield key, kdir / entry
    for patch in k.get("patches") or []:
        if "path" in patch:
            yield "patches", kdir / patch["path"]
    for generator in (k.get("configMapGenerator") or []) + (k.get("secretGenerator") or []):
        for entry in generator.get("envs") or []:
            yield "envs", kdir / entry
        for entry in generator.get("files") or []:
            yield "files", kdir / entry.split("=", 1)[-1]


def configmap_literals(kdir: Path) -> dict[str, str]:
    k = load_one(kdir / "kustomization.yaml")
    out: dict[str, str] = {}
    for generator in k.get("configMapGenerator") or []:
        for lit in generator.get("literals") or []:
            key, _, value = lit.partition("=")
            out[key] = value
    return out


def strategic_patches(kdir: Path, kind: str) -> list[dict[str, Any]]:
    out = []
    for key, path in kustomize_refs(kdir):
        if key in {"patches", "patchesStrategicMerge"}:
            doc = load_one(path)
            if isinstance(doc, dict) and doc.get("kind") == kind:
                out.append(doc)
    return out


# ---------------------------------------------------------------------------------------------
# Dockerfile parsing: logical instructions grouped by stage


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for ins in self.all("ENV"):
            for token in shlex.split(ins.args):
                key, sep, value = token.partition("=")
                assert sep, f"Dockerfile:{ins.line}: use ENV KEY=VALUE, got {token!r}"
                out[key] = value
        return out


def parse_dockerfile(text: str) -> tuple[list[Instruction], list[Stage]]:
    logical: list[Instruction] = []
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buffer):
            continue  # comments (also inside a continuation) and blank lines
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer.append(stripped[:-1].strip())
            continue
        buffer.append(stripped)
        joined = " ".join(part for part in buffer if part)
        keyword, _, args = joined.partition(" ")
        logical.append(Instruction(keyword.upper(), args.strip(), start))
        buffer = []
    assert not buffer, "Dockerfile ends inside a line continuation"

    global_args: list[Instruction] = []
    stages: list[Stage] = []
    for ins in logical:
        if ins.keyword == "FROM":
            words = ins.args.split()
            words = [w for w in words if not w.startswith("--platform")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            assert ins.keyword == "ARG", f"Dockerfile:{ins.line}: only ARG may precede the first FROM"
            global_args.append(ins)
        else:
            stages[-1].instructions.append(ins)
    return global_args, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], dict[str, Stage]]:
    global_args, stages = parse_dockerfile(DOCKERFILE.read_text())
    args = {}
    for ins in global_args:
        key, _, value = ins.args.partition("=")
        args[key] = value
    named = {s.name: s for s in stages if s.name}
    assert len(named) == len([s for s in stages if s.name]), "duplicate stage names"
    return args, named


def json_form(ins: Instruction) -> list[str]:
    value = json.loads(ins.args)
    assert isinstance(value, list), f"Dockerfile:{ins.line}: {ins.keyword} must use the JSON (exec) form"
    return value


# ---------------------------------------------------------------------------------------------
# Every file parses, every reference resolves


@pytest.mark.parametrize("path", yaml_files(), ids=rel)
def test_every_yaml_parses(path: Path) -> None:
    docs = load_docs(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: each document must be a mapping"


@pytest.mark.parametrize("kdir", kustomization_dirs(), ids=rel)
def test_kustomization_references_exist(kdir: Path) -> None:
    refs = list(kustomize_refs(kdir))
    inline = [p for p in load_one(kdir / "kustomization.yaml").get("patches") or [] if "patch" in p]
    assert refs or inline, f"{kdir}/kustomization.yaml does nothing"
    for key, path in refs:
        if key in {"resources", "components"} and path.is_dir():
            assert (path / "kustomization.yaml").is_file(), f"{key} {path} has no kustomization.yaml"
        else:
            assert path.is_file(), f"{kdir}/kustomization.yaml {key}: {path} does not exist"
        if key == "components":
            assert load_one(path / "kustomization.yaml")["kind"] == "Component"


def test_every_base_manifest_is_referenced() -> None:
    referenced = {p.resolve() for _, p in kustomize_refs(BASE)}
    manifests = {p.resolve() for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert manifests - referenced == set(), "base manifests missing from base/kustomization.yaml"


def test_every_component_and_kserve_manifest_is_referenced() -> None:
    referenced = {p.resolve() for kdir in kustomization_dirs() for _, p in kustomize_refs(kdir)}
    for directory in [*sorted(p for p in COMPONENTS.iterdir() if p.is_dir()), KSERVE]:
        for path in sorted(directory.glob("*.y*ml")):
            if path.name == "kustomization.yaml" or path in UNLISTED:
                continue
            assert path.resolve() in referenced, f"{rel(path)} is in no kustomization (or belongs in UNLISTED)"


def test_overlays_build_on_base() -> None:
    for overlay in OVERLAYS:
        k = load_one(K8S / "overlays" / overlay / "kustomization.yaml")
        assert "../../base" in k["resources"]
        tags = {i["name"]: i.get("newTag", "") for i in k["images"]}
        assert tags["electra-serve"].endswith(f"-{overlay}"), f"{overlay} overlay must use the {overlay} image"


# ---------------------------------------------------------------------------------------------
# Kubernetes base: probes, ports, security, drain budget


@pytest.fixture(scope="module")
def base_docs() -> list[Any]:
    docs: list[Any] = []
    for key, path in kustomize_refs(BASE):
        if key == "resources":
            docs.extend(load_docs(path))
    return docs


def test_probes_hit_health_endpoints_on_the_http_port(base_docs: list[Any]) -> None:
    container = server_container(one(base_docs, "Deployment", "electra-serve"))
    ports = container_ports(container)
    assert ports == {"http": HTTP_PORT, "grpc": GRPC_PORT}
    expected = {
        "livenessProbe": "/health/live",
        "readinessProbe": "/health/ready",
        "startupProbe": "/health/ready",
    }
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, f"{probe} must GET {path}"
        assert resolve_port(get["port"], ports) == HTTP_PORT, f"{probe} must use the HTTP port"
    # The startup probe must allow a slow model load before liveness may restart the pod.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


def test_services_target_the_container_ports(base_docs: list[Any]) -> None:
    ports = container_ports(server_container(one(base_docs, "Deployment", "electra-serve")))
    pod_labels = one(base_docs, "Deployment", "electra-serve")["spec"]["template"]["metadata"]["labels"]
    services = by_kind(base_docs, "Service")
    assert services
    for svc in services:
        selector = svc["spec"]["selector"]
        assert selector.items() <= pod_labels.items(), f"Service {svc['metadata']['name']} selects no pod"
        for port in svc["spec"]["ports"]:
            target = resolve_port(port.get("targetPort", port["port"]), ports)
            assert target == port["port"] or target in (HTTP_PORT, GRPC_PORT)
            if port["name"] == "grpc":
                assert target == GRPC_PORT
                assert port.get("appProtocol"), "the grpc port needs an appProtocol (HTTP/2)"
            if port["name"] == "http":
                assert target == HTTP_PORT
    main = one(base_docs, "Service", "electra-serve")
    targets = {resolve_port(p["targetPort"], ports) for p in main["spec"]["ports"]}
    assert targets == {HTTP_PORT, GRPC_PORT}


def test_pod_runs_non_root_with_a_read_only_root(base_docs: list[Any]) -> None:
    spec = one(base_docs, "Deployment", "electra-serve")["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    mounts_ok = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    for container in spec["containers"] + spec.get("initContainers", []):
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert tmp and tmp[0]["name"] in mounts_ok, f"{container['name']} needs a writable /tmp"
        assert "resources" in container and container["resources"]["requests"]
    models = [m for m in pod_server_container(spec)["volumeMounts"] if m["mountPath"] == "/models"]
    assert models and models[0].get("readOnly") is True


def test_model_repository_is_copied_from_the_server_image_or_kept(base_docs: list[Any], tmp_path: Path) -> None:
    """The initContainer copies the image's own /models into the volume the server reads, or keeps
    what the volume holds; it never regenerates models (the image ships them). Its script runs here."""
    spec = one(base_docs, "Deployment", "electra-serve")["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    server = pod_server_container(spec)
    assert init["image"] == server["image"] == "electra-serve"
    (mount,) = [m for m in init["volumeMounts"] if m["mountPath"] == "/repository"]
    config = read_env_file(BASE / "config.env")
    served = next(m for m in server["volumeMounts"] if m["mountPath"] == config["ELECTRA_MODEL_REPOSITORY"])
    assert mount["name"] == served["name"], "the initContainer must write the volume the server reads"

    image_models, volume = tmp_path / "models", tmp_path / "repository"
    (image_models / "demo-classify").mkdir(parents=True)
    (image_models / "demo-classify" / "manifest.json").write_text("{}")
    volume.mkdir()
    script = init["args"][0].replace("/repository", str(volume)).replace("/models", str(image_models))
    first = subprocess.run([*init["command"], script], capture_output=True, text=True, check=True)
    assert "copied" in first.stdout and (volume / "demo-classify" / "manifest.json").exists()
    (image_models / "demo-classify" / "manifest.json").write_text('{"changed": true}')
    again = subprocess.run([*init["command"], script], capture_output=True, text=True, check=True)
    assert "kept" in again.stdout and (volume / "demo-classify" / "manifest.json").read_text() == "{}"


def test_hpa_and_pdb_target_the_deployment(base_docs: list[Any]) -> None:
    deployment = one(base_docs, "Deployment", "electra-serve")
    assert "replicas" not in deployment["spec"], "the HPA owns replicas"
    hpa = one(base_docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "electra-serve",
    }
    assert hpa["spec"]["minReplicas"] >= 2
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])
    container = server_container(deployment)
    assert "cpu" in container["resources"]["requests"], "CPU utilization needs a CPU request"
    pdb = one(base_docs, "PodDisruptionBudget")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_configmap_is_wired_into_the_server(base_docs: list[Any]) -> None:
    k = load_one(BASE / "kustomization.yaml")
    (generator,) = k["configMapGenerator"]
    refs = server_container(one(base_docs, "Deployment", "electra-serve"))["envFrom"]
    assert {"configMapRef": {"name": generator["name"]}} in refs
    config = read_env_file(BASE / "config.env")
    assert config["ELECTRA_HOST"] == "0.0.0.0"
    assert int(config["ELECTRA_HTTP_PORT"]) == HTTP_PORT
    assert int(config["ELECTRA_GRPC_PORT"]) == GRPC_PORT


# ---------------------------------------------------------------------------------------------
# ELECTRA_* names everywhere


def env_sources() -> Iterator[tuple[str, str]]:
    """(where, NAME) for every server setting set anywhere in deploy/ or the Dockerfile."""
    for key in read_env_file(BASE / "config.env"):
        yield "base/config.env", key
    for kdir in kustomization_dirs():
        for key in configmap_literals(kdir):
            yield rel(kdir), key
        for patch in strategic_patches(kdir, "Deployment"):
            for container in patch["spec"]["template"]["spec"].get("containers", []):
                if container["name"] == SERVER_CONTAINER:
                    for env in container.get("env", []):
                        yield rel(kdir), env["name"]
    for path in (COMPOSE, COMPOSE_GPU):
        service = load_one(path)["services"]["electra-serve"]
        for key in service.get("environment", {}):
            yield rel(path), key
    for where, container in kserve_server_containers():
        for env in container.get("env", []):
            yield where, env["name"]
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    for stage in stages:
        if stage.name in {"cpu", "gpu"}:
            for key in stage.env():
                if key.startswith("ELECTRA"):
                    yield f"Dockerfile:{stage.name}", key


def test_every_setting_is_a_contract_flag() -> None:
    seen = list(env_sources())
    assert len(seen) > 10
    for where, name in seen:
        assert name.startswith("ELECTRA_"), f"{where}: {name} is not an ELECTRA_* setting"
        assert name in REFERENCE_ENV, f"{where}: {name} names no electra-serve flag"
    deployment = load_one(BASE / "deployment.yaml")
    for env in server_container(deployment).get("env", []):
        assert env["name"] in REFERENCE_ENV, f"deployment.yaml: {env['name']}"


def cli_args(args: list[str]) -> dict[str, str]:
    """The `--flag value` (or `--flag=value`) pairs of an electra-serve command line."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        flag = args[i]
        assert flag.startswith("--"), f"expected a --flag, got {flag!r} in {args}"
        if "=" in flag:
            name, value = flag[2:].split("=", 1)
            i += 1
        else:
            assert i + 1 < len(args) and not args[i + 1].startswith("--"), f"{flag} needs a value in {args}"
            name, value = flag[2:], args[i + 1]
            i += 2
        assert name not in out, f"{flag} given twice in {args}"
        out[name] = value
    return out


def flag_sources() -> Iterator[tuple[str, str]]:
    """(where, flag) for every server flag deploy/ sets, through its ELECTRA_* twin or a command line."""
    for where, name in env_sources():
        if name in REFERENCE_ENV:
            yield where, REFERENCE_ENV[name]
    for where, container in kserve_server_containers():
        for flag in cli_args(container.get("args", [])):
            yield where, flag


def test_command_lines_use_known_flags() -> None:
    seen = list(flag_sources())
    assert any(where.startswith("deploy/kserve") for where, _ in seen)
    for where, flag in seen:
        assert flag in ALL_FLAGS, f"{where}: --{flag} is no electra-serve flag (docs/REFERENCE.md §1.2)"


@functools.cache
def cli_help() -> str:
    if not (ROOT / "server" / "__main__.py").is_file():
        pytest.skip("server/__main__.py does not exist yet: cannot ask electra-serve --help")
    result = subprocess.run(
        [sys.executable, "-m", "server", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_cli_knows_every_flag_the_deployments_set() -> None:
    used = {flag for _, flag in flag_sources()} - set(LATER_FLAGS)
    missing = [flag for flag in sorted(used) if f"--{flag}" not in cli_help()]
    assert not missing, f"electra-serve --help does not list {missing}"


@pytest.mark.parametrize("flag", LATER_FLAGS)
def test_cli_knows_the_later_flags(flag: str) -> None:
    """The later flags, used or not by deploy/."""
    if f"--{flag}" not in cli_help():
        pytest.fail(f"electra-serve --help does not list --{flag} (docs/REFERENCE.md §1.2)")


ELECTRA_NAME = re.compile(r"\bELECTRA_[A-Z0-9_]*[A-Z0-9]\b")


def test_every_electra_name_in_deploy_is_a_flag() -> None:
    """Comments and docs too: a commented example (compose's API keys) must name a real setting."""
    files = [p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix in {".yaml", ".yml", ".env", ".md", ".py"}]
    # electra-serve-probe's own settings (its client certificate under mutual TLS), read by it alone.
    probe_env = set(ELECTRA_NAME.findall((ROOT / "server" / "probe.py").read_text())) - set(REFERENCE_ENV)
    assert probe_env == {"ELECTRA_PROBE_CERT", "ELECTRA_PROBE_KEY"}
    found = 0
    for path in [*files, DOCKERFILE]:
        for name in sorted(set(ELECTRA_NAME.findall(path.read_text()))):
            assert name in REFERENCE_ENV or name in probe_env, f"{rel(path)}: {name} names no electra-serve flag"
            found += 1
    assert found > 20


# ---------------------------------------------------------------------------------------------
# KServe: the ClusterServingRuntime and the InferenceService, against KServe's CRD schemas


def kserve_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for key, path in kustomize_refs(KSERVE):
        if key == "resources":
            docs.extend(load_docs(path))
    return docs


def kserve_runtime_container(runtime: dict[str, Any]) -> dict[str, Any]:
    named = [c for c in runtime["spec"]["containers"] if c["name"] == KSERVE_CONTAINER]
    assert len(named) == 1, f"the runtime needs one container named {KSERVE_CONTAINER}"
    return named[0]


def kserve_server_containers() -> Iterator[tuple[str, dict[str, Any]]]:
    """The server's container as the runtime declares it, and what the InferenceService merges into it."""
    for path in sorted(KSERVE.glob("*.yaml")):
        for doc in load_docs(path):
            if doc.get("kind") == "ClusterServingRuntime":
                yield rel(path), kserve_runtime_container(doc)
            elif doc.get("kind") == "InferenceService":
                yield rel(path), doc["spec"]["predictor"]["model"]


def openapi_to_jsonschema(node: dict[str, Any]) -> dict[str, Any]:
    """A CRD's structural OpenAPI v3 schema as JSON Schema, as strict as `kubectl apply` (field
    validation Strict): properties a schema does not list are errors unless it preserves unknown
    fields. `x-kubernetes-*` keys are not JSON Schema: int-or-string becomes a type union, the list
    types are checked by list_type_errors()."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: openapi_to_jsonschema(sub) for name, sub in value.items()}
        elif key in {"items", "additionalProperties", "not"} and isinstance(value, dict):
            out[key] = openapi_to_jsonschema(value)
        elif key in {"anyOf", "allOf", "oneOf"}:
            out[key] = [openapi_to_jsonschema(sub) for sub in value]
        elif key.startswith("x-kubernetes-") or key in {"format", "nullable", "description", "example"}:
            continue
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
        out["type"] = ["integer", "string"]
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in node and "additionalProperties" not in node and not preserve:
        out["additionalProperties"] = False
    return out


def list_type_errors(schema: dict[str, Any], value: Any, where: str = "") -> Iterator[str]:
    """What JSON Schema cannot say: `x-kubernetes-list-type: map` entries are unique by their keys
    (with the schema's defaults filled in, as the API server does), `set` entries are unique."""
    if isinstance(value, dict):
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            sub_schema = schema.get("properties", {}).get(key, extra if isinstance(extra, dict) else None)
            if sub_schema:
                yield from list_type_errors(sub_schema, sub, f"{where}.{key}")
    elif isinstance(value, list):
        items = schema.get("items", {})
        kind = schema.get("x-kubernetes-list-type")
        seen: set[str] = set()
        for item in value:
            if kind == "map":
                keys = schema["x-kubernetes-list-map-keys"]
                props = items.get("properties", {})
                identity = json.dumps([item.get(k, props.get(k, {}).get("default")) for k in keys])
            elif kind == "set":
                identity = json.dumps(item, sort_keys=True)
            else:
                continue
            if identity in seen:
                yield f"{where}: two entries with the same {kind} key {identity}"
            seen.add(identity)
        for i, item in enumerate(value):
            yield from list_type_errors(items, item, f"{where}[{i}]")


@functools.cache
def kserve_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> openAPIV3Schema of every served version of the vendored KServe CRDs."""
    out = {}
    for path in sorted(KSERVE_CRDS.glob("*.yaml")):
        crd = load_one(path)
        assert crd["kind"] == "CustomResourceDefinition"
        for version in crd["spec"]["versions"]:
            if version["served"]:
                key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
                out[key] = version["schema"]["openAPIV3Schema"]
    return out


@functools.cache
def kserve_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    schema = openapi_to_jsonschema(kserve_schemas()[(api_version, kind)])
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def crd_errors(doc: dict[str, Any]) -> list[str]:
    """Why the API server would refuse `doc` under the vendored CRD (empty when it would accept it)."""
    key = (doc.get("apiVersion", ""), doc.get("kind", ""))
    assert key in kserve_schemas(), f"no vendored CRD serves {key}"
    errors = [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in kserve_validator(*key).iter_errors(doc)
    ]
    errors += list(list_type_errors(kserve_schemas()[key], doc))
    # The part of ObjectMeta the CRD schema leaves to the API server.
    meta = doc.get("metadata", {})
    if not DNS_LABEL.fullmatch(meta.get("name", "")) or len(meta.get("name", "")) > 63:
        errors.append(f"metadata.name: {meta.get('name')!r} is not a DNS label")
    for field_name in ("labels", "annotations"):
        for k, v in (meta.get(field_name) or {}).items():
            if not isinstance(v, str):
                errors.append(f"metadata.{field_name}.{k}: {v!r} is not a string")
    return errors


def test_vendored_kserve_crds_say_where_they_come_from() -> None:
    readme = (KSERVE_CRDS / "README.md").read_text()
    crds = sorted(KSERVE_CRDS.glob("*.yaml"))
    assert {p.name for p in crds} == {
        "serving.kserve.io_clusterservingruntimes.yaml",
        "serving.kserve.io_inferenceservices.yaml",
    }
    for path in crds:
        text = path.read_text()
        match = re.search(r"kserve/kserve at ([0-9a-f]{40})", text)
        assert match, f"{rel(path)}: its header must name the upstream commit"
        assert f"config/crd/full/{path.name}" in text and match.group(1) in readme and path.name in readme
        crd = load_one(path)
        assert crd["spec"]["group"] == "serving.kserve.io"
        assert crd["metadata"]["name"] == f"{crd['spec']['names']['plural']}.serving.kserve.io"
        assert "controller-gen.kubebuilder.io/version" in crd["metadata"]["annotations"]
    assert "Apache" in readme
    assert set(kserve_schemas()) == {
        ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"),
        ("serving.kserve.io/v1beta1", "InferenceService"),
    }


@pytest.mark.parametrize("path", [p for p in sorted(KSERVE.glob("*.yaml")) if p.name != "kustomization.yaml"], ids=rel)
def test_kserve_manifests_match_the_vendored_crds(path: Path) -> None:
    for doc in load_docs(path):
        errors = crd_errors(doc)
        assert not errors, f"{rel(path)} {doc['kind']}:\n" + "\n".join(errors)


def test_crd_check_refuses_what_kserve_would() -> None:
    """The validator is not vacuous: each of these mistakes must be caught."""
    runtime = one(kserve_docs(), "ClusterServingRuntime")
    isvc = one(kserve_docs(), "InferenceService")
    assert not crd_errors(runtime) and not crd_errors(isvc)

    def broken(doc: dict[str, Any], change: Any) -> list[str]:
        doc = deepcopy(doc)
        change(doc)
        return crd_errors(doc)

    def container(doc: dict[str, Any]) -> dict[str, Any]:
        return kserve_runtime_container(doc)

    cases = {
        "unknown field": lambda d: container(d).update(prots=[]),
        "string port": lambda d: container(d)["ports"][0].update(containerPort="8000"),
        "bad quantity": lambda d: container(d)["resources"]["limits"].update(memory="2 GiB"),
        "no containers": lambda d: d["spec"].pop("containers"),
        "duplicate port": lambda d: container(d)["ports"].append({"containerPort": 8000, "name": "again"}),
        "duplicate env": lambda d: container(d)["env"].append(dict(container(d)["env"][0])),
        "priority 0": lambda d: d["spec"]["supportedModelFormats"][0].update(priority=0),
        "bad name": lambda d: d["metadata"].update(name="Electra_Serve"),
    }
    for what, change in cases.items():
        assert broken(runtime, change), f"a runtime with {what} passed the CRD check"
    isvc_cases = {
        "no predictor": lambda d: d["spec"].pop("predictor"),
        "format without name": lambda d: d["spec"]["predictor"]["model"]["modelFormat"].pop("name"),
        "string replicas": lambda d: d["spec"]["predictor"].update(minReplicas="2"),
        "unknown predictor field": lambda d: d["spec"]["predictor"].update(modle={}),
    }
    for what, change in isvc_cases.items():
        assert broken(isvc, change), f"an InferenceService with {what} passed the CRD check"


def test_kserve_runtime_serves_the_contract() -> None:
    runtime = one(kserve_docs(), "ClusterServingRuntime")
    spec = runtime["spec"]
    container = kserve_runtime_container(runtime)
    assert container["image"] == "electra-serve"
    # KServe's storage initializer puts the model repository in /mnt/models.
    args = cli_args(container["args"])
    assert args["model-repository"] == "/mnt/models"
    assert args["host"] == "0.0.0.0"
    assert int(args["http-port"]) == HTTP_PORT and int(args["grpc-port"]) == GRPC_PORT
    env = {e["name"]: e["value"] for e in container["env"]}
    assert not set(env) & {n for n, f in REFERENCE_ENV.items() if f in args}, "a flag set twice (arg and env)"
    # Port names as KServe reads them: the first port becomes the Service's port 80 (HTTP), a name with
    # h2c (or grpc) gets appProtocol kubernetes.io/h2c; Knative's names are http1 and h2c.
    ports = container_ports(container)
    assert list(ports.items()) == [("http1", HTTP_PORT), ("h2c", GRPC_PORT)]
    assert set(spec["protocolVersions"]) == {"v2", "grpc-v2"}
    formats = {f["name"]: f for f in spec["supportedModelFormats"]}
    assert set(formats) == {"electra", "onnx"}
    assert formats["electra"]["autoSelect"] is True
    assert formats["onnx"].get("autoSelect") is False, "other runtimes own plain onnx models"
    assert spec["annotations"]["prometheus.kserve.io/port"] == str(HTTP_PORT)
    assert spec["annotations"]["prometheus.kserve.io/path"] == "/metrics"
    assert spec.get("multiModel") is not True


def test_kserve_runtime_matches_the_deployment() -> None:
    """Probes, drain, resources and hardening as deploy/k8s/base gives the same server."""
    container = kserve_runtime_container(one(kserve_docs(), "ClusterServingRuntime"))
    runtime = one(kserve_docs(), "ClusterServingRuntime")
    deployment = load_one(BASE / "deployment.yaml")
    base = server_container(deployment)
    ports = container_ports(container)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        mine, theirs = container[probe], base[probe]
        assert mine["httpGet"]["path"] == theirs["httpGet"]["path"]
        assert resolve_port(mine["httpGet"]["port"], ports) == HTTP_PORT
        assert {k: v for k, v in mine.items() if k != "httpGet"} == {k: v for k, v in theirs.items() if k != "httpGet"}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert int(env["ELECTRA_DRAIN_TIMEOUT_S"]) + prestop_sleep_seconds(container) < DEFAULT_GRACE_S
    assert env["ELECTRA_INTRA_OP_THREADS"] == read_env_file(BASE / "config.env")["ELECTRA_INTRA_OP_THREADS"]
    assert container["resources"]["requests"] == container["resources"]["limits"] == base["resources"]["limits"]
    sc = container["securityContext"]
    pod_sc = deployment["spec"]["template"]["spec"]["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == pod_sc["runAsUser"] != 0
    assert sc["runAsGroup"] == pod_sc["runAsGroup"]
    assert sc["seccompProfile"] == pod_sc["seccompProfile"]
    for key in ("allowPrivilegeEscalation", "readOnlyRootFilesystem", "capabilities"):
        assert sc[key] == base["securityContext"][key]
    volumes = {v["name"]: v for v in runtime["spec"]["volumes"]}
    (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert "emptyDir" in volumes[tmp["name"]], "a writable /tmp under the read-only root"


def test_inferenceservice_uses_the_runtime() -> None:
    runtime = one(kserve_docs(), "ClusterServingRuntime")
    isvc = one(kserve_docs(), "InferenceService")
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    # Two container ports need plain Deployments: Knative (Serverless mode) allows one.
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert predictor["minReplicas"] >= 2 and predictor["maxReplicas"] >= predictor["minReplicas"]
    scheme, _, rest = model["storageUri"].partition("://")
    assert scheme in {"pvc", "s3", "gs", "https", "hdfs", "oci"}
    if scheme == "pvc":
        pvc = load_one(COMPONENTS / "model-pvc" / "pvc.yaml")
        assert rest.split("/")[0] == pvc["metadata"]["name"], "the PVC the model-pvc component fills"
    assert model["resources"]["requests"] == model["resources"]["limits"]
    for env in model.get("env", []):
        assert env["name"] in REFERENCE_ENV
    modes = [e["value"] for e in model.get("env", []) if e["name"] == "ELECTRA_MODEL_CONTROL_MODE"]
    assert all(m in {"none", "poll", "explicit"} for m in modes)


def test_kserve_kustomization_tags_the_image_like_the_base() -> None:
    k = load_one(KSERVE / "kustomization.yaml")
    assert "namespace" not in k, "the runtime is cluster-scoped: kustomize would give it a namespace"
    tags = {i["name"]: i["newTag"] for i in k["images"]}
    base_tags = {i["name"]: i["newTag"] for i in load_one(BASE / "kustomization.yaml")["images"]}
    assert tags["electra-serve"] == base_tags["electra-serve"]


# ---------------------------------------------------------------------------------------------
# TLS, mutual TLS and API keys (components)


def tls_mount(pod: dict[str, Any], volume_name: str) -> tuple[dict[str, Any], str]:
    """The volume named `volume_name` and where the server container mounts it: read-only, whole
    (a subPath mount never sees the kubelet's update when the Secret changes)."""
    (volume,) = [v for v in pod["volumes"] if v["name"] == volume_name]
    (mount,) = [m for m in pod_server_container(pod)["volumeMounts"] if m["name"] == volume_name]
    assert mount.get("readOnly") is True, f"mount {volume_name} read-only"
    assert "subPath" not in mount and "subPathExpr" not in mount, f"{volume_name}: no subPath, or renewals are missed"
    return volume, mount["mountPath"]


def component_pod_patch(kdir: Path) -> dict[str, Any]:
    (patch,) = strategic_patches(kdir, "Deployment")
    return patch["spec"]["template"]["spec"]


def json_patch_ops(kdir: Path, kind: str) -> list[dict[str, Any]]:
    """The JSON6902 operations of the inline patches that target `kind` (checking the target names)."""
    ops = []
    for patch in load_one(kdir / "kustomization.yaml").get("patches") or []:
        if patch.get("target", {}).get("kind") == kind:
            assert "path" not in patch
            ops += yaml.safe_load(patch["patch"])
    return ops


def secret_mode_is_private(volume: dict[str, Any]) -> None:
    mode = volume["secret"]["defaultMode"]
    pod = load_one(BASE / "deployment.yaml")["spec"]["template"]["spec"]
    # Owner and the pod's fsGroup (the server's group) read it; others nothing.
    assert mode & 0o044 == 0o040 and mode & 0o007 == 0, oct(mode)
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]


def test_tls_component_serves_the_cert_manager_secret() -> None:
    literals = configmap_literals(TLS)
    assert set(literals) == {"ELECTRA_TLS_CERT", "ELECTRA_TLS_KEY"}
    cert = one(load_docs(TLS / "certificate.yaml"), "Certificate", "electra-serve-tls")
    pod = component_pod_patch(TLS)
    volume, path = tls_mount(pod, "tls")
    assert volume["secret"]["secretName"] == cert["spec"]["secretName"]
    secret_mode_is_private(volume)
    # The keys cert-manager writes into a certificate's Secret.
    assert literals["ELECTRA_TLS_CERT"] == f"{path}/tls.crt"
    assert literals["ELECTRA_TLS_KEY"] == f"{path}/tls.key"
    container = pod_server_container(pod)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe] == {"httpGet": {"scheme": "HTTPS"}}, f"{probe}: only the scheme changes"
    assert "server auth" in cert["spec"]["usages"]
    assert cert["spec"]["renewBefore"] and cert["spec"]["privateKey"]["rotationPolicy"] == "Always"


def test_tls_certificate_names_every_service_and_has_an_issuer() -> None:
    cert = one(load_docs(TLS / "certificate.yaml"), "Certificate", "electra-serve-tls")
    names = set(cert["spec"]["dnsNames"])
    services = [s["metadata"]["name"] for s in load_docs(BASE / "service.yaml")]
    for name in services:
        assert name in names, f"clients dial {name}: the certificate must name it"
        assert any(n.startswith(f"{name}.") and n.endswith(".svc") for n in names), f"{name}.<namespace>.svc"
    chain = load_docs(TLS / "issuer.yaml")
    issuers = {d["metadata"]["name"]: d for d in by_kind(chain, "Issuer")}
    ref = cert["spec"]["issuerRef"]
    assert ref["kind"] == "Issuer" and ref["name"] in issuers
    ca = one(chain, "Certificate", "electra-serve-ca")
    assert ca["spec"]["isCA"] is True
    assert issuers[ref["name"]]["spec"]["ca"]["secretName"] == ca["spec"]["secretName"]
    assert "selfSigned" in issuers[ca["spec"]["issuerRef"]["name"]]["spec"]


def test_tls_component_patches_every_service_port() -> None:
    """The Service patches merge by (port, protocol): a patch without the protocol is silently dropped."""
    patches = {p["metadata"]["name"]: p for p in strategic_patches(TLS, "Service")}
    for svc in load_docs(BASE / "service.yaml"):
        patch = patches[svc["metadata"]["name"]]
        patched = {(p["port"], p["protocol"]): p["appProtocol"] for p in patch["spec"]["ports"]}
        assert set(patched) == {(p["port"], p["protocol"]) for p in svc["spec"]["ports"]}
        assert set(patched.values()) == {"https"}, "TLS is terminated by the server, not cleartext h2c"


def test_tls_component_scrapes_over_https() -> None:
    cert = one(load_docs(TLS / "certificate.yaml"), "Certificate", "electra-serve-tls")
    monitor = load_one(COMPONENTS / "monitoring" / "servicemonitor.yaml")
    (target,) = [p["target"] for p in load_one(TLS / "kustomization.yaml")["patches"] if "target" in p]
    assert (target["group"], target["kind"], target["name"]) == (
        monitor["apiVersion"].split("/")[0],
        monitor["kind"],
        monitor["metadata"]["name"],
    )
    assert len(monitor["spec"]["endpoints"]) == 1, "the patch edits endpoint 0"
    ops = {op["path"]: op["value"] for op in json_patch_ops(TLS, "ServiceMonitor")}
    assert ops["/spec/endpoints/0/scheme"] == "https"
    tls_config = ops["/spec/endpoints/0/tlsConfig"]
    assert tls_config["ca"]["secret"] == {"name": cert["spec"]["secretName"], "key": "ca.crt"}
    assert tls_config["serverName"] in cert["spec"]["dnsNames"]


def test_mtls_component_requires_client_certificates() -> None:
    k = load_one(MTLS / "kustomization.yaml")
    assert k["components"] == ["../tls"], "mtls builds on the tls component"
    tls_pod = component_pod_patch(TLS)
    _, tls_path = tls_mount(tls_pod, "tls")
    literals = configmap_literals(MTLS)
    assert literals == {"ELECTRA_TLS_CLIENT_CA": f"{tls_path}/ca.crt"}
    (cert_patch,) = strategic_patches(MTLS, "Certificate")
    assert cert_patch["metadata"]["name"] == "electra-serve-tls"
    assert {"server auth", "client auth"} <= set(cert_patch["spec"]["usages"]), "the probes present it"
    client = one(load_docs(MTLS / "metrics-client-certificate.yaml"), "Certificate")
    server = one(load_docs(TLS / "certificate.yaml"), "Certificate")
    assert client["spec"]["issuerRef"] == server["spec"]["issuerRef"], "the CA the server trusts for clients"
    assert "client auth" in client["spec"]["usages"] and "server auth" not in client["spec"]["usages"]
    ops = {op["path"]: op["value"] for op in json_patch_ops(MTLS, "ServiceMonitor")}
    secret = client["spec"]["secretName"]
    assert ops["/spec/endpoints/0/tlsConfig/cert"] == {"secret": {"name": secret, "key": "tls.crt"}}
    assert ops["/spec/endpoints/0/tlsConfig/keySecret"] == {"name": secret, "key": "tls.key"}


def test_mtls_probes_run_the_probe_script() -> None:
    """httpGet probes cannot present a client certificate: under mTLS they exec https-probe.py."""
    k = load_one(MTLS / "kustomization.yaml")
    (generator,) = [g for g in k["configMapGenerator"] if g["name"] != "electra-serve-config"]
    (script,) = generator["files"]
    assert (MTLS / script).is_file()
    pod = component_pod_patch(MTLS)
    (volume,) = [v for v in pod["volumes"] if v["name"] == "mtls-probe"]
    assert volume["configMap"]["name"] == generator["name"]
    (mount,) = [m for m in pod_server_container(pod)["volumeMounts"] if m["name"] == "mtls-probe"]
    container = pod_server_container(pod)
    expected = {"startupProbe": "/health/ready", "readinessProbe": "/health/ready", "livenessProbe": "/health/live"}
    for probe, path in expected.items():
        spec = container[probe]
        assert "httpGet" in spec and spec["httpGet"] is None, f"{probe}: drop the httpGet handler"
        assert spec["exec"]["command"] == ["python", "-S", f"{mount['mountPath']}/{script}", path]
        assert spec["timeoutSeconds"] >= 3, "room for the Python start"
    compile((MTLS / script).read_text(), script, "exec")


def _tls_files(tmp_path: Path) -> dict[str, Path]:
    """A CA, a leaf it signs for server and client auth (as the mtls component's certificate), and
    a leaf from another CA."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def make(cn: str, issuer: tuple[Any, x509.Name] | None) -> tuple[Any, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        signer, issuer_name = issuer or (key, name(cn))
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )
        if issuer is None:
            builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName("electra-serve")]), critical=False
            ).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
        return key, builder.sign(signer, hashes.SHA256())

    files: dict[str, Path] = {}

    def write(stem: str, key: Any, cert: x509.Certificate) -> None:
        files[f"{stem}.crt"] = tmp_path / f"{stem}.crt"
        files[f"{stem}.crt"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{stem}.key"] = tmp_path / f"{stem}.key"
        files[f"{stem}.key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )

    ca_key, ca = make("ca", None)
    write("ca", ca_key, ca)
    leaf_key, leaf = make("electra-serve", (ca_key, ca.subject))
    write("tls", leaf_key, leaf)
    other_key, other = make("other-ca", None)
    stranger_key, stranger = make("electra-serve", (other_key, other.subject))
    write("stranger", stranger_key, stranger)
    return files


class _Health(BaseHTTPRequestHandler):
    ready = True

    def do_GET(self) -> None:
        ok = self.path == "/health/live" or (self.path == "/health/ready" and _Health.ready)
        self.send_response(200 if ok else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_mtls_probe_script_checks_health_with_the_pods_certificate(tmp_path: Path) -> None:
    """https-probe.py against a loopback HTTPS server that requires client certificates (as the
    server does under --tls-client-ca): 0 on 200, 1 on 503, on a refused connection, on a server
    whose certificate the CA did not sign, and on a server that does not trust the probe's."""
    files = _tls_files(tmp_path)
    script = MTLS / "https-probe.py"

    def serve(cert: str, client_ca: str) -> ThreadingHTTPServer:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(files[f"{cert}.crt"], files[f"{cert}.key"])
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(files[client_ca])
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def probe(port: int, path: str) -> subprocess.CompletedProcess[str]:
        env = {
            "ELECTRA_HTTP_PORT": str(port),
            "ELECTRA_TLS_CERT": str(files["tls.crt"]),
            "ELECTRA_TLS_KEY": str(files["tls.key"]),
            "ELECTRA_TLS_CLIENT_CA": str(files["ca.crt"]),
        }
        return subprocess.run(
            [sys.executable, "-S", str(script), path], env=env, capture_output=True, text=True, timeout=60
        )

    server = serve("tls", "ca.crt")
    try:
        port = server.server_address[1]
        _Health.ready = True
        assert probe(port, "/health/ready").returncode == 0
        assert probe(port, "/health/live").returncode == 0
        _Health.ready = False
        result = probe(port, "/health/ready")
        assert result.returncode == 1 and "503" in result.stderr
        assert probe(port, "/health/live").returncode == 0
    finally:
        server.shutdown()
        server.server_close()
    assert probe(port, "/health/live").returncode == 1, "nothing listens any more"
    for cert, client_ca in (("stranger", "ca.crt"), ("tls", "stranger.crt")):
        server = serve(cert, client_ca)
        try:
            result = probe(server.server_address[1], "/health/live")
            assert result.returncode == 1, f"server {cert}, client CA {client_ca}: {result.stderr}"
        finally:
            server.shutdown()
            server.server_close()


def test_api_keys_component_mounts_the_secret_file() -> None:
    literals = configmap_literals(API_KEYS)
    assert list(literals) == ["ELECTRA_API_KEYS_FILE"]
    pod = component_pod_patch(API_KEYS)
    volume, path = tls_mount(pod, "api-keys")
    secret_mode_is_private(volume)
    directory, _, key = literals["ELECTRA_API_KEYS_FILE"].rpartition("/")
    assert directory == path
    assert "items" not in volume["secret"], "the file is the Secret's key itself"
    # The command in the component's comment creates exactly the Secret and key it mounts.
    text = (API_KEYS / "kustomization.yaml").read_text()
    assert f"create secret generic {volume['secret']['secretName']} --from-file={key}=" in text
    # Probes stay on /health/*, open by default: the component leaves them alone.
    container = pod_server_container(pod)
    assert not {"startupProbe", "readinessProbe", "livenessProbe"} & set(container)


def test_compose_shows_api_keys_as_a_secret() -> None:
    """The commented example, uncommented, is a valid compose setup."""
    example = re.compile(
        r"^(\s*)# ((?:secrets:|  - electra-api-keys|ELECTRA_API_KEYS_FILE:|  electra-api-keys:|    file:).*)$"
    )
    uncommented = []
    for line in COMPOSE.read_text().splitlines():
        m = example.match(line)
        uncommented.append(m.group(1) + m.group(2) if m else line)
    compose = yaml.safe_load("\n".join(uncommented))
    service = compose["services"]["electra-serve"]
    (secret,) = service["secrets"]
    assert service["environment"]["ELECTRA_API_KEYS_FILE"] == f"/run/secrets/{secret}"
    assert "file" in compose["secrets"][secret]
    gitignore = (ROOT / ".gitignore").read_text()
    assert f"/deploy/compose/{compose['secrets'][secret]['file'].removeprefix('./')}" in gitignore


# ---------------------------------------------------------------------------------------------
# Drain budget: preStop + drain timeout < grace period, per overlay and in compose


def overlay_drain_budget(overlay: str) -> tuple[int, int, int]:
    odir = K8S / "overlays" / overlay
    config = read_env_file(BASE / "config.env") | configmap_literals(odir)
    pod = load_one(BASE / "deployment.yaml")["spec"]["template"]["spec"]
    grace = pod["terminationGracePeriodSeconds"]
    prestop = prestop_sleep_seconds(pod_server_container(pod))
    for patch in strategic_patches(odir, "Deployment"):
        ppod = patch["spec"].get("template", {}).get("spec", {})
        grace = ppod.get("terminationGracePeriodSeconds", grace)
        for container in ppod.get("containers", []):
            if container["name"] == SERVER_CONTAINER and "lifecycle" in container:
                prestop = prestop_sleep_seconds(container)
    return prestop, int(config["ELECTRA_DRAIN_TIMEOUT_S"]), grace


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_covers_prestop_and_drain(overlay: str) -> None:
    prestop, drain, grace = overlay_drain_budget(overlay)
    assert prestop >= 1, "preStop must wait for endpoints to update before SIGTERM"
    assert drain >= 1
    assert grace > prestop + drain, f"{overlay}: grace {grace}s <= preStop {prestop}s + drain {drain}s"


def compose_seconds(value: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"bad duration {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


def test_compose_stop_grace_covers_drain() -> None:
    service = load_one(COMPOSE)["services"]["electra-serve"]
    drain = float(service["environment"]["ELECTRA_DRAIN_TIMEOUT_S"])
    assert compose_seconds(service["stop_grace_period"]) > drain


# ---------------------------------------------------------------------------------------------
# GPU overlay


def test_gpu_overlay_asks_for_one_gpu_and_cuda() -> None:
    odir = K8S / "overlays" / "gpu"
    assert configmap_literals(odir)["ELECTRA_DEVICE"] == "cuda"
    (patch,) = strategic_patches(odir, "Deployment")
    pod = patch["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == SERVER_CONTAINER)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert pod["nodeSelector"]
    gpu = configmap_literals(odir)
    cpu = read_env_file(BASE / "config.env") | configmap_literals(K8S / "overlays" / "cpu")
    assert int(gpu["ELECTRA_MAX_BATCH_SIZE"]) > int(cpu["ELECTRA_MAX_BATCH_SIZE"])
    assert configmap_literals(K8S / "overlays" / "cpu")["ELECTRA_DEVICE"] == "cpu"


# ---------------------------------------------------------------------------------------------
# compose, Prometheus, Grafana


def test_prometheus_scrapes_the_compose_server() -> None:
    services = load_one(COMPOSE)["services"]
    jobs = load_one(PROMETHEUS)["scrape_configs"]
    (job,) = [j for j in jobs if j["job_name"] == "electra-serve"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    (target,) = [t for sc in job["static_configs"] for t in sc["targets"]]
    host, _, port = target.partition(":")
    assert host in services, f"scrape target {host} is no compose service"
    server = services[host]
    assert int(port) == int(server["environment"].get("ELECTRA_HTTP_PORT", HTTP_PORT)) == HTTP_PORT
    assert any(str(p).endswith(f":{HTTP_PORT}") for p in server["ports"])
    prom = services["prometheus"]
    mounted = [v.split(":")[0] for v in prom["volumes"]]
    assert "./prometheus.yml" in mounted


def test_compose_builds_the_repository_dockerfile(
    dockerfile: tuple[dict[str, str], dict[str, Stage]],
) -> None:
    _, stages = dockerfile
    server = load_one(COMPOSE)["services"]["electra-serve"]
    context = (COMPOSE.parent / server["build"]["context"]).resolve()
    assert context == ROOT
    assert (context / server["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert server["build"]["target"] == "cpu" and "cpu" in stages
    gpu = load_one(COMPOSE_GPU)["services"]["electra-serve"]
    assert gpu["build"]["target"] == "gpu" and "gpu" in stages
    assert gpu["environment"]["ELECTRA_DEVICE"] == "cuda"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert "gpu" in device["capabilities"]


def test_grafana_provisioning_matches_compose() -> None:
    services = load_one(COMPOSE)["services"]
    grafana = services["grafana"]
    mounts = {}
    for volume in grafana["volumes"]:
        source, target = volume.split(":")[:2]
        assert (COMPOSE.parent / source).exists(), f"grafana mounts missing {source}"
        mounts[target] = (COMPOSE.parent / source).resolve()
    provisioning = mounts["/etc/grafana/provisioning"]
    (datasource,) = load_one(provisioning / "datasources" / "prometheus.yml")["datasources"]
    host = re.match(r"https?://([^:/]+)", datasource["url"]).group(1)  # type: ignore[union-attr]
    assert host == "prometheus" and host in services
    (provider,) = load_one(provisioning / "dashboards" / "electra-serve.yml")["providers"]
    assert mounts[provider["options"]["path"]] == DASHBOARD.parent.resolve()


# ---------------------------------------------------------------------------------------------
# Metric names in PromQL (dashboard, alerts, autoscaling)

METRIC = re.compile(r"\belectra_[a-z0-9_]+")


def contract_series() -> set[str]:
    suffixes = ("_bucket", "_sum", "_count")
    return OTHER_METRICS | {h + s for h in HISTOGRAMS for s in suffixes}


def server_series() -> set[str] | None:
    """Series names the server's registry exposes, or None while server.metrics does not exist."""
    try:
        from server.metrics import Metrics
    except ImportError:
        return None
    names: set[str] = set()
    for family in Metrics().registry.collect():
        if family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
        elif family.type == "counter":
            names.add(family.name + "_total")
        else:
            names.add(family.name)
    return names


def check_metric_names(expr: str, where: str) -> int:
    """Every series is a contract metric, or one the server really exposes (checked when it exists)."""
    names = METRIC.findall(expr)
    served = server_series()
    for name in names:
        if name in contract_series():
            continue
        assert served is not None, f"{where}: {name} is not a metric of docs/REFERENCE.md §6"
        assert name in served, f"{where}: the server exposes no {name}"
    for call in quantile_calls(expr):
        assert re.search(r"electra_[a-z0-9_]+_bucket\b", call), f"{where}: quantile of no _bucket series"
        assert re.search(r"by \([^)]*\ble\b", call), f"{where}: histogram_quantile must keep `le`"
    return len(names)


def quantile_calls(expr: str) -> list[str]:
    """The argument text of every histogram_quantile(...) call, parentheses balanced."""
    calls = []
    for match in re.finditer(r"histogram_quantile\(", expr):
        depth, i = 1, match.end()
        while depth:
            assert i < len(expr), f"unbalanced parentheses in {expr!r}"
            depth += {"(": 1, ")": -1}.get(expr[i], 0)
            i += 1
        calls.append(expr[match.end() : i - 1])
    return calls


def test_server_exposes_every_contract_metric() -> None:
    served = server_series()
    if served is None:
        pytest.skip("server/metrics.py does not exist yet")
    assert contract_series() <= served, f"missing: {contract_series() - served}"


def test_dashboard_panels_use_contract_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "electra-serve"
    exprs = [(p["title"], t["expr"]) for p in dash["panels"] for t in p["targets"]]
    used = set()
    for title, expr in exprs:
        assert check_metric_names(expr, f"panel {title!r}") >= 1
        used.update(re.sub(r"_(bucket|sum|count)$", "", n) for n in METRIC.findall(expr))
    wanted = {
        "electra_requests_total",
        "electra_request_duration_seconds",
        "electra_batch_size",
        "electra_padding_ratio",
        "electra_queue_depth",
        "electra_dropped_total",
    }
    assert wanted <= used, f"dashboard lacks {wanted - used}"
    latency = " ".join(e for _, e in exprs if "electra_request_duration_seconds_bucket" in e)
    assert "histogram_quantile(0.5," in latency and "histogram_quantile(0.99," in latency
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_alerts_and_autoscaling_use_contract_metrics() -> None:
    rule = load_one(COMPONENTS / "monitoring" / "prometheusrule.yaml")
    rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    assert rules
    for r in rules:
        assert check_metric_names(r["expr"], r["alert"]) >= 1
    k = load_one(COMPONENTS / "hpa-queue-depth" / "kustomization.yaml")
    ops = yaml.safe_load(k["patches"][0]["patch"])
    names = [op["value"]["pods"]["metric"]["name"] for op in ops]
    assert names == ["electra_queue_depth"]


def test_servicemonitor_scrapes_the_http_port_of_one_service(base_docs: list[Any]) -> None:
    monitor = load_one(COMPONENTS / "monitoring" / "servicemonitor.yaml")
    selector = monitor["spec"]["selector"]["matchLabels"]
    matching = [s for s in by_kind(base_docs, "Service") if selector.items() <= s["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in matching] == ["electra-serve"], "scrape each pod once"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in matching[0]["spec"]["ports"]}
    assert next(p for p in matching[0]["spec"]["ports"] if p["name"] == endpoint["port"])["port"] == HTTP_PORT


# ---------------------------------------------------------------------------------------------
# Dockerfile


def test_dockerfile_has_the_expected_stages(dockerfile: tuple[dict[str, str], dict[str, Stage]]) -> None:
    args, stages = dockerfile
    assert {"wheel", "export", "cpu", "gpu"} <= stages.keys()
    assert args["DEVICE"] == "cpu", "CPU is the default image"
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", args["CUDA_IMAGE"])
    _, all_stages = parse_dockerfile(DOCKERFILE.read_text())
    assert all_stages[-1].base == "${DEVICE}", "the last (default) stage must follow the DEVICE arg"


def test_export_stage_installs_cpu_torch_first_and_writes_the_demo(
    dockerfile: tuple[dict[str, str], dict[str, Stage]],
) -> None:
    args, stages = dockerfile
    runs = [r.args for r in stages["export"].all("RUN")]
    torch_at = next(i for i, r in enumerate(runs) if "torch==" in r)
    export_at = next(i for i, r in enumerate(runs) if "[export]" in r)
    assert torch_at < export_at, "CPU torch must be installed before the export extra"
    assert "--index-url" in runs[torch_at] and "TORCH_INDEX_URL" in runs[torch_at]
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["TORCH_VERSION"]), "pin torch exactly"
    assert "--index-url" not in runs[export_at], "only torch comes from the PyTorch index"
    assert any(re.search(r"electra-export --demo --output /models\b", r) for r in runs)


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_server_stages_ship_no_torch(target: str, dockerfile: tuple[dict[str, str], dict[str, Stage]]) -> None:
    args, stages = dockerfile
    stage = stages[target]
    assert stage.base not in stages or stage.base == "uv", "server stages start from a clean base"
    runs = " ".join(r.args for r in stage.all("RUN"))
    assert f"electra-serve[{target}]" in runs
    for forbidden in ("torch", "[export]", "transformers", "optimum", "TORCH_"):
        assert forbidden not in runs, f"{target} stage must not install {forbidden}"
    for copy in stage.all("COPY"):
        sources = [t for t in shlex.split(copy.args) if not t.startswith("--")][:-1]
        if "--from=export" in copy.args:
            assert sources == ["/models"], "only the model repository comes from the export stage"
    ort = "ORT_VERSION" if target == "cpu" else "ORT_GPU_VERSION"
    assert re.fullmatch(r"\d+\.\d+\.\d+", args[ort]), f"pin {ort}"


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_server_stages_run_electra_serve_as_non_root(
    target: str, dockerfile: tuple[dict[str, str], dict[str, Stage]]
) -> None:
    _, stages = dockerfile
    stage = stages[target]
    (user,) = stage.all("USER")
    uid = user.args.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric non-root USER (runAsNonRoot can verify it)"
    deployment = load_one(BASE / "deployment.yaml")
    assert int(uid) == deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    (expose,) = stage.all("EXPOSE")
    assert sorted(int(p.split("/")[0]) for p in expose.args.split()) == [HTTP_PORT, GRPC_PORT]
    env = stage.env()
    assert env["ELECTRA_HOST"] == "0.0.0.0"
    assert env["ELECTRA_MODEL_REPOSITORY"] == "/models"
    # Each server copies the demo models pruned to what it serves.
    assert any(c.args.startswith(f"--from=models-{target} /models") for c in stage.all("COPY"))
    assert env["ELECTRA_STATE_FILE"].startswith("/tmp/"), "the probe's file lives on the writable /tmp"
    (entrypoint,) = stage.all("ENTRYPOINT")
    assert json_form(entrypoint) == ["electra-serve"]
    (health,) = stage.all("HEALTHCHECK")
    assert json.loads(health.args.split(" CMD ", 1)[1]) == ["electra-serve-probe"]


def test_healthcheck_fails_when_nothing_listens(tmp_path: Path) -> None:
    """The HEALTHCHECK's probe, pointed at a state file whose server is gone or never listened."""
    state = tmp_path / "state.json"
    command = [sys.executable, "-m", "server.probe", "--state-file", str(state)]
    missing = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert missing.returncode == 1 and "no state file" in missing.stderr
    state.write_text(json.dumps({"pid": os.getpid(), "http": "http://127.0.0.1:1"}))  # nothing listens on 1
    refused = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert refused.returncode == 1 and "127.0.0.1:1" in refused.stderr


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        segments = pattern.split("/")
        for i, seg in enumerate(segments):
            last = i == len(segments) - 1
            if seg == "**":
                regex += ".*" if last else "(?:[^/]+/)*"
                continue
            part = ""
            j = 0
            while j < len(seg):
                ch = seg[j]
                if ch == "*":
                    part += "[^/]*"
                elif ch == "?":
                    part += "[^/]"
                elif ch == "[":
                    end = seg.index("]", j)
                    part += seg[j : end + 1]
                    j = end
                else:
                    part += re.escape(ch)
                j += 1
            regex += part + ("" if last else "/")
        patterns.append((negate, re.compile(regex + r"\Z")))
    return patterns


def dockerignored(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last matching pattern wins; an excluded directory hides what is inside."""
    parts = path.split("/")
    for depth in range(1, len(parts) + 1):
        prefix = "/".join(parts[:depth])
        excluded = False
        for negate, regex in patterns:
            if regex.match(prefix):
                excluded = not negate
        if excluded:
            return True
    return False


def test_dockerfile_copies_files_that_exist_and_are_not_ignored() -> None:
    patterns = dockerignore_patterns()
    assert dockerignored(".venv/bin/python", patterns) and dockerignored(".git/HEAD", patterns)
    assert dockerignored("server/__pycache__/x.cpython-311.pyc", patterns)
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    copied = []
    for stage in stages:
        for ins in stage.all("COPY") + stage.all("ADD"):
            if "--from=" in ins.args:
                continue
            copied += [t for t in shlex.split(ins.args) if not t.startswith("--")][:-1]
    assert {"pyproject.toml", "README.md", "server", "export", "proto"} <= set(copied)
    for source in copied:
        path = ROOT / source
        assert path.exists(), f"Dockerfile copies {source}, which is not in the repository"
        assert not dockerignored(source, patterns), f".dockerignore excludes {source}"
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for f in files:
            name = rel(f)
            if "__pycache__" not in name and not name.endswith((".pyc", ".pyo")):
                assert not dockerignored(name, patterns), f".dockerignore excludes {name}"


def test_package_data_the_image_needs_is_copied() -> None:
    """The wheel stage copies only some paths: the packages pyproject declares must be among them."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = project["tool"]["setuptools"]["packages"]["find"]["include"]
    readme = project["project"]["readme"]
    text = DOCKERFILE.read_text()
    for pattern in packages:
        name = pattern.rstrip("*")
        assert re.search(rf"^COPY {name} \./{name}$", text, re.M), f"the wheel stage must copy {name}/"
    assert readme in text
    for script in ("electra-serve", "electra-export"):
        assert script in project["project"]["scripts"]


# ---------------------------------------------------------------------------------------------
# Rendered overlays (kubectl kustomize), when kubectl is installed

KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed: overlays not rendered")


def kustomize(directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [KUBECTL or "kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def probe_endpoint(probe: dict[str, Any], ports: dict[str, int], config: dict[str, str]) -> tuple[str, str, int]:
    """(scheme, path, port) a probe checks: an httpGet, or the mtls component's exec of https-probe.py
    (which reads the port from ELECTRA_HTTP_PORT)."""
    handlers = [h for h in ("httpGet", "exec", "grpc", "tcpSocket") if h in probe]
    assert len(handlers) == 1, f"a probe has exactly one handler, got {handlers}"
    if "httpGet" in probe:
        get = probe["httpGet"]
        return get.get("scheme", "HTTP"), get["path"], resolve_port(get["port"], ports)
    command = probe["exec"]["command"]
    assert command[:2] == ["python", "-S"] and command[2].endswith("/https-probe.py"), command
    return "HTTPS", command[3], int(config["ELECTRA_HTTP_PORT"])


def rendered_invariants(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = one(docs, "Deployment", "electra-serve")
    pod = deployment["spec"]["template"]["spec"]
    container = server_container(deployment)
    (ref,) = container["envFrom"]
    config = one(docs, "ConfigMap", ref["configMapRef"]["name"])["data"]
    assert all(k in REFERENCE_ENV for k in config)
    drain = int(config["ELECTRA_DRAIN_TIMEOUT_S"])
    assert pod["terminationGracePeriodSeconds"] > prestop_sleep_seconds(container) + drain
    ports = container_ports(container)
    scheme = "HTTPS" if "ELECTRA_TLS_CERT" in config else "HTTP"
    expected = {"startupProbe": "/health/ready", "readinessProbe": "/health/ready", "livenessProbe": "/health/live"}
    for probe, path in expected.items():
        assert probe_endpoint(container[probe], ports, config) == (scheme, path, HTTP_PORT), probe
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"] + [m for c in pod.get("initContainers", []) for m in c["volumeMounts"]]:
        assert mount["name"] in volumes, f"mount {mount['name']} has no volume"
    for name in ("ELECTRA_TLS_CERT", "ELECTRA_TLS_KEY", "ELECTRA_TLS_CLIENT_CA", "ELECTRA_API_KEYS_FILE"):
        if name in config:
            mounted = [m for m in container["volumeMounts"] if config[name].startswith(m["mountPath"] + "/")]
            assert mounted and "secret" in volumes[mounted[0]["name"]], f"{name} points into no mounted Secret"
    for volume in volumes.values():
        if "configMap" in volume:
            assert one(docs, "ConfigMap", volume["configMap"]["name"]), "kustomize renames generated ConfigMaps"
    for svc in by_kind(docs, "Service"):
        for port in svc["spec"]["ports"]:
            assert resolve_port(port["targetPort"], ports) in (HTTP_PORT, GRPC_PORT)
            if scheme == "HTTPS":
                assert port["appProtocol"] == "https", f"{svc['metadata']['name']}:{port['port']} under TLS"
    return {"config": config, "container": container, "pod": pod, "volumes": volumes}


@needs_kubectl
def test_cpu_overlay_renders() -> None:
    r = rendered_invariants(kustomize(K8S / "overlays" / "cpu"))
    assert r["config"]["ELECTRA_DEVICE"] == "cpu"
    assert r["container"]["image"].endswith("-cpu")
    assert "nvidia.com/gpu" not in r["container"]["resources"].get("limits", {})


@needs_kubectl
def test_gpu_overlay_renders() -> None:
    r = rendered_invariants(kustomize(K8S / "overlays" / "gpu"))
    assert r["config"]["ELECTRA_DEVICE"] == "cuda"
    assert r["container"]["image"].endswith("-gpu")
    assert r["container"]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert r["container"]["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert r["pod"]["tolerations"] and r["pod"]["nodeSelector"]
    # the patch merges into the base container instead of replacing its probes and mounts
    assert r["container"]["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert r["pod"]["initContainers"][0]["image"] == r["container"]["image"]


def kustomize_with(tmp_path: Path, overlay: str, components: list[Path]) -> list[dict[str, Any]]:
    """Render an overlay plus components, in the order given (the order an overlay would list them)."""

    # kustomize accepts only relative paths to other kustomizations.
    def relative(target: Path) -> str:
        return str(Path(*[".."] * len(tmp_path.parts[1:])) / target.relative_to("/"))

    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [relative(K8S / "overlays" / overlay)],
                "components": [relative(c) for c in components],
            }
        )
    )
    return kustomize(tmp_path)


def top_level_components() -> list[Path]:
    """Every component an overlay lists itself, monitoring before the TLS ones (whose ServiceMonitor
    patches need it); those another component includes (tls, in mtls) are left out."""
    components = sorted(p for p in COMPONENTS.iterdir() if (p / "kustomization.yaml").is_file())
    included = {
        (c / ref).resolve() for c in components for ref in load_one(c / "kustomization.yaml").get("components") or []
    }
    return sorted((c for c in components if c.resolve() not in included), key=lambda c: c.name != "monitoring")


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_with_every_component_renders(overlay: str, tmp_path: Path) -> None:
    components = top_level_components()
    assert MTLS in components and TLS not in components
    docs = kustomize_with(tmp_path, overlay, components)
    r = rendered_invariants(docs)
    assert "persistentVolumeClaim" in r["volumes"]["models"] and "emptyDir" not in r["volumes"]["models"]
    assert not r["pod"].get("initContainers"), "with the PVC there is nothing to export at start"
    claim = r["volumes"]["models"]["persistentVolumeClaim"]["claimName"]
    assert one(docs, "PersistentVolumeClaim", claim)
    metrics = one(docs, "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert {m["type"] for m in metrics} == {"Resource", "Pods"}
    assert one(docs, "ServiceMonitor") and one(docs, "PrometheusRule")
    # mtls (with tls) and api-keys: every setting in the ConfigMap, every probe an exec over mTLS.
    assert {"ELECTRA_TLS_CERT", "ELECTRA_TLS_KEY", "ELECTRA_TLS_CLIENT_CA", "ELECTRA_API_KEYS_FILE"} <= set(r["config"])
    assert all("exec" in r["container"][p] for p in ("startupProbe", "readinessProbe", "livenessProbe"))
    (endpoint,) = one(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["scheme"] == "https" and {"ca", "cert", "keySecret", "serverName"} <= set(endpoint["tlsConfig"])
    tls = one(docs, "Certificate", "electra-serve-tls")
    assert {"server auth", "client auth"} <= set(tls["spec"]["usages"])
    assert {d["metadata"]["name"] for d in by_kind(docs, "Certificate")} == {
        "electra-serve-ca",
        "electra-serve-tls",
        "electra-serve-metrics-client",
    }


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_with_tls_renders(overlay: str, tmp_path: Path) -> None:
    docs = kustomize_with(tmp_path, overlay, [COMPONENTS / "monitoring", TLS])
    r = rendered_invariants(docs)
    assert "ELECTRA_TLS_CLIENT_CA" not in r["config"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert r["container"][probe]["httpGet"]["scheme"] == "HTTPS"
    # The merge kept the base's probe timings.
    base = server_container(load_one(BASE / "deployment.yaml"))
    assert r["container"]["readinessProbe"]["periodSeconds"] == base["readinessProbe"]["periodSeconds"]
    (endpoint,) = one(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["scheme"] == "https" and "cert" not in endpoint["tlsConfig"]
    assert r["volumes"]["tls"]["secret"]["secretName"] == "electra-serve-tls"


@needs_kubectl
def test_overlay_with_api_keys_keeps_plain_probes(tmp_path: Path) -> None:
    docs = kustomize_with(tmp_path, "cpu", [API_KEYS])
    r = rendered_invariants(docs)
    assert r["config"]["ELECTRA_API_KEYS_FILE"].startswith("/etc/electra/api-keys/")
    assert all(
        r["container"][p]["httpGet"].get("scheme", "HTTP") == "HTTP" for p in ("readinessProbe", "livenessProbe")
    )


@needs_kubectl
def test_kserve_renders_and_matches_the_crds() -> None:
    docs = kustomize(KSERVE)
    assert {d["kind"] for d in docs} == {"ClusterServingRuntime", "InferenceService"}
    for doc in docs:
        errors = crd_errors(doc)
        assert not errors, f"rendered {doc['kind']}:\n" + "\n".join(errors)
    runtime = one(docs, "ClusterServingRuntime")
    assert "namespace" not in runtime["metadata"], "cluster-scoped"
    image = kserve_runtime_container(runtime)["image"]
    base_tag = {i["name"]: i["newTag"] for i in load_one(BASE / "kustomization.yaml")["images"]}["electra-serve"]
    assert image == f"electra-serve:{base_tag}"
