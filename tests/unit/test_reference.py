"""docs/REFERENCE.md against the code, in both directions where the document's list is meant to be
complete: every electra-serve flag (environment twin, default), every route the HTTP application
registers, every RPC of the two gRPC services, the error table, the KServe tensors, and every
Prometheus metric (type, labels, buckets). No model is loaded: the application is built over an
empty repository, the metrics registry on its own."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

from server import metrics as metrics_module
from server.settings import REPEATABLE, Settings, build_parser

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "REFERENCE.md"
HEADING = re.compile(r"^(#{2,3}) (\d+(?:\.\d+)?)\.? ", re.M)
ELECTRA_NAME = re.compile(r"\bELECTRA_[A-Z0-9_]*[A-Z0-9]\b")


@cache
def text() -> str:
    return REFERENCE.read_text(encoding="utf-8")


def section(number: str) -> str:
    """The text of "## N." or "### N.M" up to the next heading of the same or a higher level."""
    found = list(HEADING.finditer(text()))
    for i, match in enumerate(found):
        if match.group(2) == number:
            level = len(match.group(1))
            end = next((m.start() for m in found[i + 1 :] if len(m.group(1)) <= level), len(text()))
            return text()[match.start() : end]
    raise AssertionError(f"docs/REFERENCE.md has no section {number}")


def table_rows(body: str) -> Iterator[list[str]]:
    """The cells of every table row (header and separator rows left out); `\\|` stays inside a cell."""
    for line in body.splitlines():
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        yield cells


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def test_sections_are_numbered_in_order() -> None:
    numbers = [m.group(2) for m in HEADING.finditer(text()) if "." not in m.group(2)]
    assert numbers == [str(n) for n in range(1, len(numbers) + 1)]
    assert len(numbers) >= 6


# ---------------------------------------------------------------------------------------------
# §1.2: electra-serve's flags


def settings_flags() -> dict[str, Any]:
    """--flag -> default, as server.settings defines them (the parser is built from the same fields)."""
    return {"--" + name.replace("_", "-"): field.default for name, field in Settings.model_fields.items()}


def documented_flags() -> dict[str, list[str]]:
    """--flag -> its row in §1.2's table."""
    rows = {}
    for cells in table_rows(section("1.2")):
        names = ticked(cells[0])
        if names and names[0].startswith("--"):
            flag = names[0].split()[0]
            assert flag not in rows, f"{flag} is listed twice"
            rows[flag] = cells
    return rows


def test_the_parser_is_the_settings() -> None:
    options = {o for action in build_parser()._actions for o in action.option_strings} - {"-h", "--help"}
    expected = set(settings_flags())
    expected |= {"--no-" + f[2:] for f, d in settings_flags().items() if isinstance(d, bool)}
    assert options == expected


def test_every_flag_is_documented_and_every_documented_flag_exists() -> None:
    code, doc = set(settings_flags()), set(documented_flags())
    assert not code - doc, f"flags missing from docs/REFERENCE.md §1.2: {sorted(code - doc)}"
    assert not doc - code, f"docs/REFERENCE.md §1.2 lists flags electra-serve does not have: {sorted(doc - code)}"


@pytest.mark.parametrize("flag", sorted(settings_flags()))
def test_flag_row_names_its_twin_and_default(flag: str) -> None:
    cells = documented_flags().get(flag)
    if cells is None:
        pytest.skip(f"{flag} is not documented (reported by the test above)")
    assert ticked(cells[1]) == ["ELECTRA_" + flag[2:].upper().replace("-", "_")], cells[1]
    default = settings_flags()[flag]
    if isinstance(default, bool):
        assert f"`{str(default).lower()}`" in cells[2], f"{flag}: default {default} not in {cells[2]!r}"
        assert f"`--no-{flag[2:]}`" in cells[0], f"{flag} is a boolean: document --no-{flag[2:]}"
    elif default is not None:
        assert f"`{default}`" in cells[2], f"{flag}: default {default!r} not in {cells[2]!r}"


def test_repeatable_flags_are_said_to_be() -> None:
    for name in REPEATABLE:
        cells = documented_flags()["--" + name.replace("_", "-")]
        assert "repeatable" in cells[3]


def test_every_electra_variable_is_a_flag_twin_or_read_by_the_code() -> None:
    twins = {"ELECTRA_" + f[2:].upper().replace("-", "_") for f in settings_flags()}
    sources = [p for d in ("server", "export", "tools", "loadtests") for p in (ROOT / d).rglob("*") if p.is_file()]
    read = set()
    for path in sources:
        if path.suffix in {".py", ".sh", ""}:
            read |= set(ELECTRA_NAME.findall(path.read_text(encoding="utf-8", errors="replace")))
    for name in sorted(set(ELECTRA_NAME.findall(text()))):
        assert name in twins or name in read, f"docs/REFERENCE.md names {name}, which nothing reads"


# ---------------------------------------------------------------------------------------------
# §3: HTTP routes and the error table


def walk(routes: Iterable[Any]) -> Iterator[tuple[str, str]]:
    for route in routes:
        methods, path = getattr(route, "methods", None), getattr(route, "path", None)
        if methods and path:
            yield from ((m, path) for m in methods if m != "HEAD")
        inner = getattr(route, "routes", None) or getattr(getattr(route, "original_router", None), "routes", None)
        if inner:
            yield from walk(inner)


@cache
def app_routes() -> frozenset[tuple[str, str]]:
    """(METHOD, path) of every route of the application the server runs, repository API included."""
    import tempfile

    from server.api.http.exchange import HttpLimits
    from server.api.repository import RepositoryControl
    from server.app import build_app
    from server.assembly import assemble

    with tempfile.TemporaryDirectory() as empty:
        parts = assemble(Settings(device="cpu"), Path(empty))  # nothing to load
        app = build_app(
            parts.service, HttpLimits(), lambda: (b"", "text/plain"), RepositoryControl(parts.registry, "none")
        )
        found = set(walk(app.routes))
        for path, operations in app.openapi()["paths"].items():
            found |= {(method.upper(), path) for method in operations}
    return frozenset(found)


def documented_routes() -> set[tuple[str, str]]:
    routes = set()
    for cells in table_rows(section("3.2")):
        if len(cells) >= 2 and cells[0] in {"GET", "POST", "PUT", "DELETE", "PATCH"}:
            (path,) = ticked(cells[1])
            routes.add((cells[0], path))
    return routes


def test_every_route_is_documented_and_every_documented_route_exists() -> None:
    code, doc = set(app_routes()), documented_routes()
    assert len(code) > 20
    assert not code - doc, f"routes missing from docs/REFERENCE.md §3.2: {sorted(code - doc)}"
    assert not doc - code, f"docs/REFERENCE.md §3.2 lists routes the server does not have: {sorted(doc - code)}"


def test_the_error_table_is_the_code_table() -> None:
    from server.core.errors import ErrorKind

    rows = {(cells[0], tuple(ticked(cells[1]))) for cells in table_rows(section("3.1")) if cells[0].isdigit()}
    code = {(str(kind.http_status), (kind.grpc_code_name,)) for kind in ErrorKind}
    assert rows == code


def test_timing_and_id_headers_are_documented() -> None:
    from server.api.metadata import MODEL_HEADER, REQUEST_ID_HEADER, TIMEOUT_HEADER, TIMING_HEADERS, VERSION_HEADER

    for header in (MODEL_HEADER, VERSION_HEADER, REQUEST_ID_HEADER, TIMEOUT_HEADER, *TIMING_HEADERS):
        assert f"`{header}`" in section("3.1"), header
        if header != TIMEOUT_HEADER:
            assert f"`{header}`" in section("4"), header


# ---------------------------------------------------------------------------------------------
# §4: gRPC


def test_every_rpc_is_documented() -> None:
    # Read from the .proto sources: importing this repository's KServe messages would clash, in one
    # test process, with tritonclient's copy that the e2e tests import.
    services = {
        "electra.v1.ElectraService": ROOT / "proto/electra/v1/electra.proto",
        "inference.GRPCInferenceService": ROOT / "proto/inference/grpc_service.proto",
    }
    grpc = section("4")
    for full_name, source in services.items():
        methods = re.findall(r"^\s*rpc\s+(\w+)\s*\(", source.read_text(), flags=re.MULTILINE)
        assert methods, f"no rpc found in {source}"
        assert f"`{full_name}`" in grpc, full_name
        for method in methods:
            assert f"`{method}`" in grpc, f"{full_name}/{method} is not in docs/REFERENCE.md §4"
    assert "`grpc.health.v1.Health`" in grpc and "`grpc.reflection.v1alpha.ServerReflection`" in grpc


# ---------------------------------------------------------------------------------------------
# §5: KServe v2 tensors


def test_every_task_signature_is_documented() -> None:
    from server.api.kserve import tensors as t
    from server.api.kserve.dataplane import EXTENSIONS, PLATFORM

    rows = {cells[0]: cells for cells in table_rows(section("5"))}
    for task in ("classify", "qa", "tag", "discriminate"):
        specs = t.input_specs(task)
        assert set(ticked(rows[task][1])) == {s.name for s in specs}, task
        assert ("optional" in rows[task][1]) == any(s.optional for s in specs), task
    assert set(ticked(rows["classify"][2])) == {t.RESULT, t.LOGITS}
    assert all(f"`{name}`" in section("5") for name in t.DTYPES)
    assert f'"{PLATFORM}"' in section("5")
    assert all(f'"{extension}"' in section("3.6") for extension in EXTENSIONS)


# ---------------------------------------------------------------------------------------------
# §6: metrics


def code_metrics() -> dict[str, MetricWrapperBase]:
    """Exposed name (counters with `_total`) -> metric, from a fresh registry."""
    found = {}
    for metric in vars(metrics_module.Metrics()).values():
        if isinstance(metric, MetricWrapperBase):
            name = metric._name + ("_total" if metric._type == "counter" else "")
            found[name] = metric
    return found


def documented_metrics() -> dict[str, list[str]]:
    return {ticked(cells[0])[0]: cells for cells in table_rows(section("6")) if cells[0].startswith("`electra_")}


BUCKET_SETS = {
    "latency": metrics_module.LATENCY_BUCKETS,
    "batch size": metrics_module.BATCH_SIZE_BUCKETS,
    "batch tokens": metrics_module.BATCH_TOKEN_BUCKETS,
    "ratio": metrics_module.RATIO_BUCKETS,
}


def test_every_metric_is_documented_and_every_documented_metric_exists() -> None:
    code, doc = set(code_metrics()), set(documented_metrics())
    assert not code - doc, f"metrics missing from docs/REFERENCE.md §6: {sorted(code - doc)}"
    assert not doc - code, f"docs/REFERENCE.md §6 lists metrics the server does not define: {sorted(doc - code)}"


def test_metric_types_labels_and_buckets() -> None:
    documented = documented_metrics()
    for name, metric in code_metrics().items():
        cells = documented[name]
        assert cells[1] == metric._type, f"{name}: documented as {cells[1]}, defined as {metric._type}"
        assert ticked(cells[2]) == list(metric._labelnames), f"{name}: labels {cells[2]}"
        if metric._type == "histogram":
            bounds = tuple(b for b in metric._upper_bounds if b != float("inf"))
            assert tuple(float(b) for b in BUCKET_SETS[cells[3]]) == bounds, f"{name}: buckets {cells[3]}"
        else:
            assert not cells[3], f"{name} has no buckets"


def test_bucket_sets_are_listed_with_their_values() -> None:
    listed: dict[str, tuple[float, ...]] = {}
    for line in section("6").splitlines():
        match = re.match(r"^- ([a-z ]+?)(?: \([^)]*\))?: ([0-9., ]+)$", line)
        if match:
            listed[match.group(1)] = tuple(float(v) for v in match.group(2).split(","))
    assert listed == {name: tuple(float(v) for v in values) for name, values in BUCKET_SETS.items()}
