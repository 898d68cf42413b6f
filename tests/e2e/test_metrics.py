"""`/metrics` (docs/REFERENCE.md §6) scraped from a real server and parsed with prometheus_client's own
parser: every metric of the reference with its type and labels, and counters that move with traffic.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import ServerProcess

# family name as the parser reports it (counters lose `_total`) -> (type, labels of its samples)
REFERENCE_METRICS = {
    "electra_requests": ("counter", {"model", "task", "protocol", "code"}),
    "electra_request_duration_seconds": ("histogram", {"model", "task", "protocol"}),
    "electra_queue_duration_seconds": ("histogram", {"model"}),
    "electra_inference_duration_seconds": ("histogram", {"model"}),
    "electra_batch_size": ("histogram", {"model"}),
    "electra_batch_tokens": ("histogram", {"model"}),
    "electra_padding_ratio": ("histogram", {"model"}),
    "electra_queue_depth": ("gauge", {"model"}),
    "electra_model_ready": ("gauge", {"model"}),
    "electra_dropped": ("counter", {"model", "reason"}),
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def scrape(http: httpx.Client) -> tuple[dict[str, object], Samples]:
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    samples = {(s.name, frozenset(s.labels.items())): s.value for f in families.values() for s in f.samples}
    return families, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over every series of `name` that has (at least) these labels."""
    wanted = set(labels.items())
    return sum(v for (sample, series), v in samples.items() if sample == name and wanted <= series)


def test_every_contract_metric_with_its_type_and_labels(http: httpx.Client) -> None:
    # One request and one refusal first, so that labelled series exist.
    assert http.post("/v1/classify", json={"model": "cls3", "inputs": "warm"}).status_code == 200
    http.post("/v1/classify", json={"model": "cls3", "inputs": "x"}, headers={"x-request-timeout-ms": "0.001"})
    families, _ = scrape(http)
    for name, (kind, labels) in REFERENCE_METRICS.items():
        assert name in families, f"{name} missing from /metrics"
        family = families[name]
        assert family.type == kind, f"{name} is a {family.type}, not a {kind}"
        assert family.samples, f"{name} has no series"
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, f"{sample.name} labels {sorted(sample.labels)}"
            assert sample.name.startswith("electra_")
        if kind == "histogram":
            assert {s.name for s in family.samples} == {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
            assert any(s.labels.get("le") == "+Inf" for s in family.samples)


def test_model_ready_is_one_per_model(http: httpx.Client) -> None:
    names = {m["name"] for m in http.get("/v1/models").json()["models"]}
    families, _ = scrape(http)
    ready = {s.labels["model"]: s.value for s in families["electra_model_ready"].samples}
    assert ready == dict.fromkeys(names, 1.0)
    depth = {s.labels["model"]: s.value for s in families["electra_queue_depth"].samples}
    assert set(depth) == names and all(v == 0 for v in depth.values())  # an idle server queues nothing


def test_counters_move_with_requests(http: httpx.Client) -> None:
    model = "multilabel"
    _, before = scrape(http)
    for text in ("One.", "Two words here.", "A somewhat longer third request about photosynthesis."):
        assert http.post("/v1/classify", json={"model": model, "inputs": text}).status_code == 200
    assert http.post("/models/multilabel", json={"inputs": ["Four.", "Five and six."]}).status_code == 200
    assert http.post("/v1/classify", json={"model": model, "inputs": []}).status_code == 422
    _, after = scrape(http)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ok = {"model": model, "task": "classify", "protocol": "rest"}
    assert delta("electra_requests_total", **ok, code="200") == 4
    # Every answered request is timed, the 422 included; the error is counted under its model and code.
    assert delta("electra_request_duration_seconds_count", **ok) == 5
    assert delta("electra_request_duration_seconds_sum", **ok) > 0
    assert delta("electra_requests_total", **ok, code="422") == 1
    errors = total(after, "electra_requests_total", code="422", protocol="rest") - total(
        before, "electra_requests_total", code="422", protocol="rest"
    )
    assert errors == 1
    # Four requests, five rows: at least one model run, at most five; every row went through one.
    runs = delta("electra_batch_size_count", model=model)
    assert 1 <= runs <= 5
    assert delta("electra_batch_size_sum", model=model) == 5
    assert delta("electra_inference_duration_seconds_count", model=model) == runs
    assert delta("electra_batch_tokens_count", model=model) == runs
    assert delta("electra_batch_tokens_sum", model=model) >= 5 * 3  # [CLS] text [SEP]: >= 3 tokens a row
    assert delta("electra_padding_ratio_count", model=model) == runs
    assert delta("electra_queue_duration_seconds_count", model=model) == 4
    assert value(after, "electra_queue_depth", model=model) == 0


def test_deadline_drops_are_counted(http: httpx.Client) -> None:
    _, before = scrape(http)
    response = http.post(
        "/v1/classify", json={"model": "cls3", "inputs": ["a", "b", "c"]}, headers={"x-request-timeout-ms": "0.001"}
    )
    assert response.status_code == 504
    _, after = scrape(http)
    dropped = value(after, "electra_dropped_total", model="cls3", reason="deadline") - value(
        before, "electra_dropped_total", model="cls3", reason="deadline"
    )
    assert dropped == 1  # requests (of three rows here), like electra_requests_total: the alert divides them
    timeouts = total(after, "electra_requests_total", task="classify", code="504") - total(
        before, "electra_requests_total", task="classify", code="504"
    )
    assert timeouts == 1
