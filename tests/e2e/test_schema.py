"""The served OpenAPI document describes the real responses: schemathesis generates requests for
every operation of a real server's `/openapi.json` (valid and invalid ones, a fixed seed, a bounded
number per operation) and checks each answer: never a 5xx, a status code the operation documents,
the documented content type and a body that matches the documented schema. Every error body is
the contract's `{"error": "<message>"}`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from server.api.metadata import TIMEOUT_HEADER
from tests.e2e.conftest import ServerProcess, start_server

SEED = 20261203
# Requests the fuzzing phase generates per operation (positive and negative). The examples phase
# sends each documented example once and the coverage phase its deterministic boundary and
# mutation cases (~2,400 requests in all, ~20 s against a warm server on a loaded 2-core host).
MAX_EXAMPLES = 50
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Served models by task (`served_repository`). Generated requests name one most of the time:
# random names only reach the 404s, several models serve each task (a request without `model`
# is a 400), and the real answers are what the response schemas must describe.
MODELS = {
    "classify": ["demo-classify", "cls3", "multilabel"],
    "qa": ["demo-qa", "qa-short"],
    "tag": ["demo-tag", "tag5"],
    "discriminate": ["demo-discriminator", "disc-short"],
}
ALL_MODELS = sorted(name for names in MODELS.values() for name in names)


@pytest.fixture(scope="module")
def schema_server(served_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Every model of `served_repository`, in the default model control mode (`none`): the
    repository's load and unload routes are served and documented, but refuse (400) instead of
    changing what serves, so they are tested like every other route without breaking the rest."""
    handle = start_server(
        served_repository, tmp_path_factory.mktemp("schema") / "server.log", "--max-queue-delay-ms", "5"
    )
    try:
        handle.wait_ready()
        yield handle
    finally:
        assert handle.stop() == 0, handle.log()[-3000:]


def load_schema(url: str) -> Any:
    """The running server's OpenAPI document, with a reproducible, bounded generation config."""
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "cache": {"enabled": False},
            "generation": {
                "mode": "all",
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                # No example database on disk (.hypothesis/): every run replays the same cases.
                "database": "none",
            },
            "phases": {"stateful": {"enabled": False}},
            "request-timeout": 60,
        }
    )
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=config)

    @schema.hook
    def before_add_examples(context: schemathesis.HookContext, examples: list[schemathesis.Case]) -> None:
        # The documented examples, each sent to a model it is meant for.
        for example in examples:
            with_model(example, models_for(example)[0], True)

    @schema.hook
    def flatmap_case(context: schemathesis.HookContext, case: schemathesis.Case) -> st.SearchStrategy:
        # The fuzzing phase (the coverage phase keeps its own values): a served model most of the time.
        names = [*models_for(case), None]
        return st.tuples(st.sampled_from(names), st.booleans()).map(lambda choice: with_model(case, *choice))

    return schema


def models_for(case: schemathesis.Case) -> list[str]:
    """The served models a request like `case` is meant for."""
    if case.path.removeprefix("/v1/") in MODELS:
        return MODELS[case.path.removeprefix("/v1/")]
    if case.path.endswith("/infer"):
        inputs = case.body.get("inputs") if isinstance(case.body, dict) else None
        entries = inputs if isinstance(inputs, list) else []
        names = [entry.get("name") for entry in entries if isinstance(entry, dict)]
        if "QUESTION" in names or "CONTEXT" in names:
            return MODELS["qa"]
        return MODELS["classify"] + MODELS["tag"] + MODELS["discriminate"]
    return ALL_MODELS


def with_model(case: schemathesis.Case, name: str | None, version_1: bool) -> schemathesis.Case:
    """`case` naming a served model (None: as generated), and version 1 of it when `version_1`."""
    if name is None:
        return case
    if isinstance(case.path_parameters, dict) and "name" in case.path_parameters:
        case.path_parameters["name"] = name
        if version_1 and "version" in case.path_parameters:
            case.path_parameters["version"] = "1"
    elif case.path.startswith("/v1/") and isinstance(case.body, dict):
        case.body["model"] = name
    return case


@pytest.fixture(scope="module")
def api_schema(schema_server: ServerProcess) -> Any:
    return load_schema(schema_server.url)


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    # schemathesis' lazy schemas (from_fixture, 4.32) rename `request.node._nodeid` for each
    # operation's report, an attribute pytest 9.2 no longer has: give it one (the same id).
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


def call_and_check(case: schemathesis.Case) -> None:
    """Send `case`; its answer must be documented: status, content type, headers, body schema."""
    response = case.call()
    checks = CHECKS
    if response.status_code == 504 and TIMEOUT_HEADER in {name.lower() for name in case.headers or {}}:
        # The deadline the request set itself (x-request-timeout-ms, as short as generated) passed:
        # a documented answer, not a server error. Every other check still applies.
        checks = [check for check in CHECKS if check is not not_a_server_error]
    case.validate_response(response, checks=checks)
    probe_answer = response.status_code == 503 and case.path.endswith(("/live", "/ready"))
    if response.status_code >= 400 and not probe_answer:
        # The contract's error body (probes answer their own documented body with their 503).
        body = json.loads(response.content)
        assert isinstance(body, dict) and isinstance(body.get("error"), str), response.content[:500]


@schema.parametrize()
def test_every_operation_answers_as_documented(case: schemathesis.Case) -> None:
    call_and_check(case)
