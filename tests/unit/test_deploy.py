"""Static checks of the Dockerfile, .dockerignore and deploy/ (kustomize, compose, Prometheus, Grafana).

No Docker engine or cluster is needed: files are parsed and cross-checked against each other and
against the public contract (flags, ports, probe paths, metric names). When `kubectl` is on the
PATH the overlays are also rendered with `kubectl kustomize` and the rendered objects are checked;
without it those tests are skipped, and say so.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

HTTP_PORT = 8000
GRPC_PORT = 8001
SERVER_CONTAINER = "electra-serve"

# CONTRACT.md §1: every electra-serve flag, and its ELECTRA_<FLAG_IN_CAPS> twin.
CONTRACT_FLAGS = (
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
# Server flags beyond the contract that the deployments tune; checked against `electra-serve --help`.
EXTRA_FLAGS = ("intra-op-threads",)
CONTRACT_ENV = {"ELECTRA_" + f.upper().replace("-", "_"): f for f in CONTRACT_FLAGS + EXTRA_FLAGS}

# CONTRACT.md §5.
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
    return sorted(p.parent for p in K8S.rglob("kustomization.yaml"))


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


def test_model_repository_is_filled_by_the_export_image(base_docs: list[Any]) -> None:
    spec = one(base_docs, "Deployment", "electra-serve")["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    assert init["image"] == "electra-serve-export"
    assert init["args"][:1] == ["--demo"] and "--output" in init["args"]
    output = init["args"][init["args"].index("--output") + 1]
    mount = next(m for m in init["volumeMounts"] if m["mountPath"] == output)
    config = read_env_file(BASE / "config.env")
    served = next(
        m for m in pod_server_container(spec)["volumeMounts"] if m["mountPath"] == config["ELECTRA_MODEL_REPOSITORY"]
    )
    assert mount["name"] == served["name"], "the initContainer must write the volume the server reads"


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
        assert name in CONTRACT_ENV, f"{where}: {name} names no electra-serve flag"
    deployment = load_one(BASE / "deployment.yaml")
    for env in server_container(deployment).get("env", []):
        assert env["name"] in CONTRACT_ENV, f"deployment.yaml: {env['name']}"


def test_cli_knows_every_flag_the_deployments_set() -> None:
    if not (ROOT / "server" / "__main__.py").is_file():
        pytest.skip("server/__main__.py does not exist yet: cannot ask electra-serve --help")
    result = subprocess.run(
        [sys.executable, "-m", "server", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    used = {CONTRACT_ENV[name] for _, name in env_sources() if name in CONTRACT_ENV}
    for flag in sorted(used):
        assert f"--{flag}" in result.stdout, f"electra-serve --help does not list --{flag}"


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
        assert served is not None, f"{where}: {name} is not a contract metric"
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
    assert any(c.args.startswith("--from=export /models") for c in stage.all("COPY"))
    (entrypoint,) = stage.all("ENTRYPOINT")
    assert json_form(entrypoint) == ["electra-serve"]
    (health,) = stage.all("HEALTHCHECK")
    command = health.args.split(" CMD ", 1)[1]
    check = json.loads(command)
    assert check[:2] == ["python", "-c"], "healthcheck uses python, no curl in the image"
    assert "/health/ready" in check[2] and "urllib" in check[2]
    compile(check[2], "<healthcheck>", "exec")


def test_healthcheck_fails_when_nothing_listens(dockerfile: tuple[dict[str, str], dict[str, Stage]]) -> None:
    _, stages = dockerfile
    (health,) = stages["cpu"].all("HEALTHCHECK")
    code = json.loads(health.args.split(" CMD ", 1)[1])[2]
    # Port 1 on loopback: nothing listens there, so the check must exit non-zero.
    result = subprocess.run(
        [sys.executable, "-c", code], env={"ELECTRA_HTTP_PORT": "1"}, capture_output=True, timeout=30
    )
    assert result.returncode != 0


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


def rendered_invariants(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = one(docs, "Deployment", "electra-serve")
    pod = deployment["spec"]["template"]["spec"]
    container = server_container(deployment)
    (ref,) = container["envFrom"]
    config = one(docs, "ConfigMap", ref["configMapRef"]["name"])["data"]
    assert all(k in CONTRACT_ENV for k in config)
    drain = int(config["ELECTRA_DRAIN_TIMEOUT_S"])
    assert pod["terminationGracePeriodSeconds"] > prestop_sleep_seconds(container) + drain
    ports = container_ports(container)
    for probe, path in (("readinessProbe", "/health/ready"), ("livenessProbe", "/health/live")):
        assert container[probe]["httpGet"]["path"] == path
        assert resolve_port(container[probe]["httpGet"]["port"], ports) == HTTP_PORT
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"] + [m for c in pod.get("initContainers", []) for m in c["volumeMounts"]]:
        assert mount["name"] in volumes, f"mount {mount['name']} has no volume"
    for svc in by_kind(docs, "Service"):
        for port in svc["spec"]["ports"]:
            assert resolve_port(port["targetPort"], ports) in (HTTP_PORT, GRPC_PORT)
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
    assert r["pod"]["initContainers"][0]["image"].startswith("electra-serve-export:")


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_with_every_component_renders(overlay: str, tmp_path: Path) -> None:
    # kustomize accepts only relative paths to other kustomizations.
    def relative(target: Path) -> str:
        return str(Path(*[".."] * len(tmp_path.parts[1:])) / target.relative_to("/"))

    components = sorted(p for p in COMPONENTS.iterdir() if (p / "kustomization.yaml").is_file())
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
    docs = kustomize(tmp_path)
    r = rendered_invariants(docs)
    assert "persistentVolumeClaim" in r["volumes"]["models"] and "emptyDir" not in r["volumes"]["models"]
    assert not r["pod"].get("initContainers"), "with the PVC there is nothing to export at start"
    claim = r["volumes"]["models"]["persistentVolumeClaim"]["claimName"]
    assert one(docs, "PersistentVolumeClaim", claim)
    metrics = one(docs, "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert {m["type"] for m in metrics} == {"Resource", "Pods"}
    assert one(docs, "ServiceMonitor") and one(docs, "PrometheusRule")
