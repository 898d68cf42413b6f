"""REST end to end (docs/REFERENCE.md §3) on a real electra-serve over loopback: response shapes, the
error table (every status with a JSON {"error"} body), deadlines, overload, timing headers,
/v1/models, health and the OpenAPI document.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import ServerProcess, start_server

SERVED = ["cls3", "demo-classify", "demo-discriminator", "demo-qa", "demo-tag", "disc-short", "multilabel", "qa-short",
          "ranker", "tag5"]  # fmt: skip
TIMING_HEADERS = ("x-total-time", "x-tokenization-time", "x-queue-time", "x-inference-time")
LONG_TEXT = " ".join(["an unbelievably long sentence about photosynthesis"] * 40)  # ~ 240 tokens


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def assert_error(response: httpx.Response, status: int, *words: str) -> str:
    """The contract's error shape: the status, a JSON content type, a body of exactly {"error": message}."""
    assert response.status_code == status, f"{response.status_code} {response.text}"
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    message = body["error"]
    assert isinstance(message, str) and message.strip()
    for word in words:
        assert word.lower() in message.lower(), f"{word!r} not in {message!r}"
    return message


# ------------------------------------------------------------------ successful requests


def test_task_routes_answer_one_input_or_a_list(http: httpx.Client) -> None:
    one = http.post("/v1/classify", json={"model": "cls3", "inputs": "A fine day."})
    assert one.status_code == 200
    assert [set(e) for e in one.json()] == [{"label", "score"}]  # top_k 1 by default
    many = http.post("/v1/classify", json={"model": "cls3", "inputs": ["A.", "B.", {"text": "C", "text_pair": "D"}]})
    assert many.status_code == 200
    assert [len(entry) for entry in many.json()] == [1, 1, 1]

    qa = http.post("/v1/qa", json={"model": "demo-qa", "inputs": {"question": "Who?", "context": "Ada wrote it."}})
    assert set(qa.json()) == {"score", "start", "end", "answer"}
    qa3 = http.post(
        "/v1/qa",
        json={"model": "demo-qa", "inputs": [{"question": "Who?", "context": "Ada wrote it in London."}] * 2,
              "parameters": {"top_k": 3}},
    )  # fmt: skip
    assert len(qa3.json()) == 2 and all(len(answers) == 3 for answers in qa3.json())

    tag = http.post("/v1/tag", json={"model": "demo-tag", "inputs": ["Ada lives in London.", ""],
                                     "parameters": {"ignore_labels": []}})  # fmt: skip
    assert tag.status_code == 200
    entities, empty = tag.json()
    assert entities and all({"entity_group", "score", "word", "start", "end"} == set(e) for e in entities)
    assert empty == []

    text = "The chef cooked the meal."
    disc = http.post("/v1/discriminate", json={"model": "demo-discriminator", "inputs": text})
    body = disc.json()
    assert [t["token"] for t in body["tokens"]] == ["the", "chef", "cooked", "the", "meal", "."]
    assert [w["token"] for w in body["words"]] == ["The", "chef", "cooked", "the", "meal", "."]
    for token in body["tokens"] + body["words"]:
        assert set(token) >= {"token", "start", "end", "score", "replaced"}
        assert text[token["start"] : token["end"]].lower() == token["token"].lower()  # offsets index the text
        assert 0.0 <= token["score"] <= 1.0 and token["replaced"] == (token["score"] > 0.5)


@pytest.mark.parametrize("route,model", [("/v1/classify", "cls3"), ("/v1/tag", "tag5"),
                                         ("/v1/discriminate", "disc-short")])  # fmt: skip
def test_empty_string_is_a_valid_text(http: httpx.Client, route: str, model: str) -> None:
    response = http.post(route, json={"model": model, "inputs": ""})
    assert response.status_code == 200, response.text


def test_timing_headers(http: httpx.Client) -> None:
    for route, body in [
        ("/v1/classify", {"model": "cls3", "inputs": ["One.", "Two words."]}),
        ("/v1/qa", {"model": "qa-short", "inputs": {"question": "What?", "context": LONG_TEXT}}),
        ("/v1/tag", {"model": "tag5", "inputs": LONG_TEXT}),
        ("/v1/discriminate", {"model": "disc-short", "inputs": "Short."}),
        ("/models/cls3", {"inputs": "Hello."}),
    ]:
        response = http.post(route, json=body)
        assert response.status_code == 200, response.text
        times = {name: float(response.headers[name]) for name in TIMING_HEADERS}
        assert all(value >= 0 for value in times.values()), times
        assert times["x-inference-time"] > 0, times  # milliseconds of a real model run
        parts = times["x-tokenization-time"] + times["x-queue-time"] + times["x-inference-time"]
        assert times["x-total-time"] + 1.0 >= parts, times  # the stages fit in the total (ms, rounded)
        assert response.headers["x-model-name"] == body.get("model", "cls3")


def test_models_list(http: httpx.Client) -> None:
    response = http.get("/v1/models")
    assert response.status_code == 200
    models = {m["name"]: m for m in response.json()["models"]}
    assert sorted(models) == SERVED
    for model in models.values():
        assert {"name", "task", "labels", "precision", "device", "max_seq_len", "parity"} <= set(model)
        assert model["precision"] == "fp32" and model["device"] == "cpu"
        assert set(model["parity"]) >= {"max_abs_error", "top1_agreement"}
        assert 0 <= model["parity"]["max_abs_error"] < 1e-3 and model["parity"]["top1_agreement"] == 1.0
    assert models["cls3"]["labels"] == ["contradiction", "entailment", "neutral"]
    assert models["demo-classify"]["labels"] == ["NEGATIVE", "POSITIVE"]
    assert models["demo-tag"]["labels"][:3] == ["O", "B-PER", "I-PER"]
    assert {name: m["task"] for name, m in models.items()} == {
        "cls3": "classify", "demo-classify": "classify", "multilabel": "classify",
        "demo-discriminator": "discriminate", "disc-short": "discriminate",
        "demo-qa": "qa", "qa-short": "qa", "demo-tag": "tag", "tag5": "tag", "ranker": "rerank",
    }  # fmt: skip
    assert (models["ranker"]["score_activation"], models["ranker"]["relevant_label"]) == ("sigmoid", None)
    assert (models["qa-short"]["max_seq_len"], models["tag5"]["max_seq_len"], models["disc-short"]["max_seq_len"]) == (
        64, 48, 40,
    )  # fmt: skip
    assert models["demo-qa"]["max_seq_len"] == 512

    one = http.get("/v1/models/tag5")
    assert one.status_code == 200 and one.json() == models["tag5"]
    assert_error(http.get("/v1/models/nope"), 404, "nope")


def test_health(http: httpx.Client) -> None:
    assert http.get("/health/live").status_code == 200
    ready = http.get("/health/ready")
    assert ready.status_code == 200 and ready.headers["content-type"].startswith("application/json")


def test_openapi_lists_the_routes_with_examples(http: httpx.Client) -> None:
    document = http.get("/openapi.json")
    assert document.status_code == 200
    paths = document.json()["paths"]
    for path in ("/v1/models", "/v1/models/{name}", "/health/live", "/health/ready", "/metrics", "/models/{name}"):
        assert path in paths, sorted(paths)
    defaults = {"classify": "demo-classify", "qa": "demo-qa", "tag": "demo-tag", "discriminate": "demo-discriminator"}
    for task, model in defaults.items():
        operation = paths[f"/v1/{task}"]["post"]
        examples = operation["requestBody"]["content"]["application/json"]["examples"]
        assert examples, task
        # Every documented example is a request the server answers.
        for name, example in examples.items():
            response = http.post(f"/v1/{task}", json={**example["value"], "model": model})
            assert response.status_code == 200, f"{task} example {name}: {response.text}"


# ------------------------------------------------------------------ the error table


@pytest.mark.parametrize(
    "route,content,status,words",
    [
        ("/v1/classify", b"{not json", 400, ["json"]),
        ("/v1/classify", b"", 400, ["empty"]),
        ("/v1/classify", b"[1, 2]", 400, ["object"]),
        ("/v1/classify", b'"just a string"', 400, ["object"]),
        ("/models/cls3", b"{not json", 400, ["json"]),
    ],
)
def test_body_that_is_not_a_json_object(
    http: httpx.Client, route: str, content: bytes, status: int, words: list[str]
) -> None:
    assert_error(http.post(route, content=content, headers={"content-type": "application/json"}), status, *words)


@pytest.mark.parametrize(
    "body,status,words",
    [
        ({"model": "cls3"}, 422, ["inputs"]),
        ({"model": "cls3", "inputs": []}, 422, ["empty"]),
        ({"model": "cls3", "inputs": 5}, 422, ["inputs"]),
        ({"model": "cls3", "inputs": [["nested"]]}, 422, ["inputs[0]"]),
        ({"model": "cls3", "inputs": {"text_pair": "no text"}}, 422, ["text"]),
        ({"model": "cls3", "inputs": "x", "parameters": {"top_k": 0}}, 400, ["top_k"]),
        ({"model": "cls3", "inputs": "x", "parameters": {"function_to_apply": "relu"}}, 400, ["function_to_apply"]),
        ({"model": "cls3", "inputs": "x", "parameters": {"topk": 2}}, 400, ["topk"]),
        ({"model": "cls3", "inputs": "x", "parameters": "top_k=2"}, 400, ["parameters"]),
        ({"model": 7, "inputs": "x"}, 400, ["model"]),
        ({"model": "nope", "inputs": "x"}, 404, ["nope"]),
        ({"model": "demo-qa", "inputs": "x"}, 400, ["qa"]),  # a model of another task
    ],
    ids=["missing-inputs", "empty-list", "number", "nested-list", "pair-without-text", "top_k-0", "bad-function",
         "unknown-parameter", "parameters-not-object", "model-not-string", "unknown-model", "wrong-task"],
)  # fmt: skip
def test_classify_bad_requests(http: httpx.Client, body: dict[str, Any], status: int, words: list[str]) -> None:
    assert_error(http.post("/v1/classify", json=body), status, *words)


@pytest.mark.parametrize(
    "route,body",
    [
        ("/v1/qa", {"model": "qa-short", "inputs": []}),
        ("/v1/qa", {"model": "qa-short", "inputs": {"question": "only a question"}}),
        ("/v1/qa", {"model": "qa-short", "inputs": {"question": "", "context": "empty question"}}),
        ("/v1/tag", {"model": "tag5", "inputs": []}),
        ("/v1/tag", {"model": "tag5", "inputs": {"text": "not a string"}}),
        ("/v1/discriminate", {"model": "disc-short", "inputs": []}),
        ("/v1/discriminate", {"model": "disc-short", "inputs": [1, 2]}),
    ],
)
def test_bad_inputs_of_other_tasks(http: httpx.Client, route: str, body: dict[str, Any]) -> None:
    response = http.post(route, json=body)
    assert_error(response, response.status_code)
    assert response.status_code in (400, 422)


@pytest.mark.parametrize(
    "route,parameters",
    [
        ("/v1/tag", {"aggregation_strategy": "median"}),
        ("/v1/tag", {"ignore_labels": "O"}),
        ("/v1/tag", {"stride": 46}),  # 48 tokens minus [CLS] and [SEP]: no room left to advance
        ("/v1/discriminate", {"threshold": 2}),
        ("/v1/qa", {"doc_stride": 100}),
        ("/v1/qa", {"max_seq_len": 1000}),  # beyond the model
    ],
)
def test_bad_parameters_are_400(http: httpx.Client, route: str, parameters: dict[str, Any]) -> None:
    inputs: Any = {"question": "Who?", "context": LONG_TEXT} if route == "/v1/qa" else LONG_TEXT
    model = {"/v1/tag": "tag5", "/v1/discriminate": "disc-short", "/v1/qa": "qa-short"}[route]
    assert_error(http.post(route, json={"model": model, "inputs": inputs, "parameters": parameters}), 400)


@pytest.mark.parametrize("route", ["/v1/classify", "/v1/qa", "/v1/tag", "/v1/discriminate"])
def test_ambiguous_model_is_400(http: httpx.Client, route: str) -> None:
    inputs: Any = {"question": "Who?", "context": "Ada."} if route == "/v1/qa" else "Hello."
    assert_error(http.post(route, json={"inputs": inputs}), 400, "model")


def test_unknown_routes_are_404_json(http: httpx.Client) -> None:
    assert_error(http.post("/v1/summarize", json={"inputs": "x"}), 404)
    assert_error(http.get("/nothing/here"), 404)
    assert_error(http.post("/models/nope", json={"inputs": "x"}), 404, "nope")
    response = http.get("/v1/classify")  # a known route, the wrong method
    assert_error(response, 405)


def test_too_many_inputs_is_413(http: httpx.Client) -> None:
    assert_error(http.post("/v1/classify", json={"model": "cls3", "inputs": ["x"] * 513}), 413, "512")
    assert http.post("/v1/classify", json={"model": "cls3", "inputs": ["x"] * 512}).status_code == 200


def test_text_longer_than_the_model(http: httpx.Client) -> None:
    assert_error(http.post("/v1/classify", json={"model": "cls3", "inputs": LONG_TEXT}), 422, "truncate")
    pair = {"text": "short", "text_pair": LONG_TEXT}
    assert_error(http.post("/v1/classify", json={"model": "cls3", "inputs": ["ok", pair]}), 422, "inputs[1]")
    cut = http.post("/v1/classify", json={"model": "cls3", "inputs": pair, "parameters": {"truncate": True}})
    assert cut.status_code == 200
    # Tasks that window long texts never refuse them.
    assert http.post("/v1/tag", json={"model": "tag5", "inputs": LONG_TEXT}).status_code == 200
    assert http.post("/v1/discriminate", json={"model": "disc-short", "inputs": LONG_TEXT}).status_code == 200


@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan"])
def test_bad_deadline_header_is_400(http: httpx.Client, value: str) -> None:
    response = http.post("/v1/classify", json={"model": "cls3", "inputs": "x"}, headers={"x-request-timeout-ms": value})
    assert_error(response, 400, "x-request-timeout-ms")


def test_deadline_passed_is_504(http: httpx.Client) -> None:
    response = http.post(
        "/v1/classify", json={"model": "cls3", "inputs": ["x"] * 50}, headers={"x-request-timeout-ms": "0.001"}
    )
    assert_error(response, 504, "deadline")
    generous = http.post(
        "/v1/classify", json={"model": "cls3", "inputs": "x"}, headers={"x-request-timeout-ms": "30000"}
    )
    assert generous.status_code == 200


# ------------------------------------------------------------------ limits on a small server

QUEUE_DELAY_MS = 200


@pytest.fixture(scope="module")
def tiny(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One small model behind a one-row queue that holds a batch for 200 ms, and small bodies."""
    log_path = tmp_path_factory.mktemp("tiny-server") / "server.log"
    handle = start_server(
        server.repository, log_path, "--models", "cls3", "--max-queue-size", "1",
        "--max-queue-delay-ms", str(QUEUE_DELAY_MS), "--max-request-bytes", "1024",
    )  # fmt: skip
    try:
        handle.wait_ready()
        yield handle
    finally:
        assert handle.stop() == 0, handle.log()[-3000:]


def test_body_too_large_is_413(tiny: ServerProcess) -> None:
    body = {"inputs": "x" * 2000}
    assert_error(httpx.post(f"{tiny.url}/v1/classify", json=body), 413, "1024")

    def chunks() -> Iterator[bytes]:  # no content-length: the limit holds while streaming too
        yield b'{"inputs": "'
        for _ in range(10):
            yield b"y" * 200
        yield b'"}'

    assert_error(httpx.post(f"{tiny.url}/v1/classify", content=chunks()), 413, "1024")
    assert httpx.post(f"{tiny.url}/v1/classify", json={"inputs": "x" * 500}).status_code == 200


def test_model_may_be_left_out_when_one_model_serves_the_task(tiny: ServerProcess) -> None:
    """On the shared server every task has two models (see the 400 test); here classify has one."""
    response = httpx.post(f"{tiny.url}/v1/classify", json={"inputs": "Hello."})
    assert response.status_code == 200 and response.headers["x-model-name"] == "cls3"
    assert_error(httpx.post(f"{tiny.url}/v1/qa", json={"inputs": {"question": "a", "context": "b"}}), 404, "qa")


def test_request_larger_than_the_queue_is_413(tiny: ServerProcess) -> None:
    assert_error(httpx.post(f"{tiny.url}/v1/classify", json={"inputs": ["a", "b"]}), 413, "queue")


def dropped(metrics_text: str, reason: str) -> float:
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "electra_dropped":
            return sum(s.value for s in family.samples if s.name == "electra_dropped_total"
                       and s.labels["reason"] == reason)  # fmt: skip
    return 0.0


async def test_queue_full_is_429_with_retry_after(tiny: ServerProcess) -> None:
    before = dropped(httpx.get(f"{tiny.url}/metrics").text, "overload")
    async with httpx.AsyncClient(base_url=tiny.url, timeout=30) as client:
        responses = await asyncio.gather(*(client.post("/v1/classify", json={"inputs": f"text {i}"})
                                           for i in range(12)))  # fmt: skip
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {200, 429}, statuses
    refused = [r for r in responses if r.status_code == 429]
    for response in refused:
        assert_error(response, 429, "overloaded")
        assert int(response.headers["retry-after"]) >= 1
    after = dropped(httpx.get(f"{tiny.url}/metrics").text, "overload")
    assert after - before == len(refused)  # one row refused per request


def test_deadline_passed_while_queued_is_504(tiny: ServerProcess) -> None:
    """The row waits out the 200 ms queue delay; its 20 ms deadline expires first."""
    before = dropped(httpx.get(f"{tiny.url}/metrics").text, "deadline")
    response = httpx.post(f"{tiny.url}/v1/classify", json={"inputs": "late"}, headers={"x-request-timeout-ms": "20"})
    assert_error(response, 504, "deadline")
    assert dropped(httpx.get(f"{tiny.url}/metrics").text, "deadline") - before == 1


def test_the_readmes_curl_examples_work_as_written(served_repository: Path, tmp_path: Path) -> None:
    # The README's first requests are what a newcomer types: run them verbatim (curl -d alone sends
    # a form content type, which the server refuses with 415), only the port changed.
    import json
    import re
    import shlex
    import shutil
    import subprocess

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    lines = [line for line in readme.splitlines() if re.match(r"curl -s localhost:8000/v1/\w+ ", line)]
    assert len(lines) == 4, lines
    demo = "demo-classify,demo-qa,demo-tag,demo-discriminator"  # the models `electra-serve` starts with
    server = start_server(served_repository, tmp_path / "server.log", "--models", demo)
    try:
        server.wait_ready()
        for line in lines:
            argv = shlex.split(line.replace("localhost:8000", f"127.0.0.1:{server.http_port}"))
            answer = subprocess.run([*argv, "-w", "\n%{http_code}"], capture_output=True, text=True, timeout=60)
            body, status = answer.stdout.rsplit("\n", 1)
            assert status == "200", (line, status, body)
            assert json.loads(body), line
    finally:
        server.stop()


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_api_docs_need_no_internet(server: ServerProcess, page: str) -> None:
    """Swagger UI and ReDoc come from the package: clusters without internet get working pages."""
    import re

    html = httpx.get(f"{server.url}{page}", timeout=10)
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    references = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", html.text)
    assert references, html.text
    outside = [ref for ref in references if re.match(r"(https?:)?//", ref)]
    assert not outside, outside
    for ref in references:
        assert httpx.get(f"{server.url}{ref}", timeout=10).status_code == 200, ref
