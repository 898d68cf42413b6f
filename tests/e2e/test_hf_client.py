"""`huggingface_hub.InferenceClient(model="http://HOST:PORT/models/NAME")` works unchanged against
`POST /models/{name}` and agrees with the /v1 routes; plus the raw response shapes of the
Hugging Face Inference API (text classification is a list of lists, even for one input).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

import httpx
import pytest
from huggingface_hub import InferenceClient

from tests.e2e.conftest import ServerProcess

TOLERANCE = 1e-6  # same server, same model: only JSON round-tripping differs
CONTEXT = (
    "Marie Curie was a physicist and chemist who conducted pioneering research on radioactivity. "
    "She was born in Warsaw in 1867 and moved to Paris in 1891, where she studied at the Sorbonne. "
) * 3
TEXT = "Ada Lovelace worked with Charles Babbage in London on the Analytical Engine."


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def client_for(server: ServerProcess) -> Callable[[str], InferenceClient]:
    return lambda name: InferenceClient(model=f"{server.url}/models/{name}", timeout=60)


def v1(http: httpx.Client, task: str, model: str, inputs: Any, parameters: dict[str, Any] | None = None) -> Any:
    response = http.post(f"/v1/{task}", json={"model": model, "inputs": inputs, "parameters": parameters})
    assert response.status_code == 200, response.text
    return response.json()


def same(actual: list[dict[str, Any]] | dict[str, Any], expected: Any) -> None:
    actual_list = actual if isinstance(actual, list) else [actual]
    expected_list = expected if isinstance(expected, list) else [expected]
    assert len(actual_list) == len(expected_list)
    for a, e in zip(actual_list, expected_list, strict=True):
        for key, value in e.items():
            if isinstance(value, float):
                assert a[key] == pytest.approx(value, abs=TOLERANCE), key
            else:
                assert a[key] == value, key


@pytest.mark.parametrize(
    "kwargs,parameters",
    [
        ({}, None),
        ({"top_k": 3}, {"top_k": 3}),
        ({"top_k": 2, "function_to_apply": "sigmoid"}, {"top_k": 2, "function_to_apply": "sigmoid"}),
        ({"top_k": 3, "function_to_apply": "none"}, {"top_k": 3, "function_to_apply": "none"}),
    ],
    ids=["default", "top3", "sigmoid", "none"],
)
def test_text_classification(
    client_for: Callable[[str], InferenceClient], http: httpx.Client, kwargs: dict[str, Any], parameters: Any
) -> None:
    result = client_for("cls3").text_classification(TEXT, **kwargs)
    assert all(type(element).__name__ == "TextClassificationOutputElement" for element in result)
    same([asdict(element) for element in result], v1(http, "classify", "cls3", TEXT, parameters))


def test_text_classification_multilabel_default(
    client_for: Callable[[str], InferenceClient], http: httpx.Client
) -> None:
    result = client_for("multilabel").text_classification(TEXT, top_k=4)
    same([asdict(e) for e in result], v1(http, "classify", "multilabel", TEXT, {"top_k": 4}))
    assert sum(e.score for e in result) != pytest.approx(1.0, abs=1e-3)  # sigmoid: multi-label


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"top_k": 3},
        {"top_k": 2, "doc_stride": 16, "max_answer_len": 5},
        {"handle_impossible_answer": True, "align_to_words": False, "top_k": 2},
        {"max_seq_len": 48, "max_question_len": 8},
    ],
    ids=["default", "top3", "stride", "impossible-noalign", "seq48"],
)
def test_question_answering(
    client_for: Callable[[str], InferenceClient], http: httpx.Client, kwargs: dict[str, Any]
) -> None:
    question = "Where was Marie Curie born?"
    result = client_for("qa-short").question_answering(question=question, context=CONTEXT, **kwargs)
    elements = result if isinstance(result, list) else [result]
    assert all(type(e).__name__ == "QuestionAnsweringOutputElement" for e in elements)
    expected = v1(http, "qa", "qa-short", {"question": question, "context": CONTEXT}, kwargs)
    assert isinstance(result, list) == isinstance(expected, list)
    same([asdict(e) for e in elements], expected)
    for element in elements:
        assert CONTEXT[element.start : element.end] == element.answer


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"aggregation_strategy": "first", "ignore_labels": []},
        {"aggregation_strategy": "max", "stride": 20},
        {"aggregation_strategy": "none", "ignore_labels": ["O", "B-A"]},
    ],
    ids=["default", "first", "max-stride", "none"],
)
def test_token_classification(
    client_for: Callable[[str], InferenceClient], http: httpx.Client, kwargs: dict[str, Any]
) -> None:
    text = TEXT * 3  # longer than tag5's 48 tokens: windowed
    result = client_for("tag5").token_classification(text, **kwargs)
    assert result, "no entity: nothing compared"
    assert all(type(e).__name__ == "TokenClassificationOutputElement" for e in result)
    # huggingface_hub's TokenClassificationOutputElement has no `index` field (strategy none sends it).
    expected = [{k: v for k, v in e.items() if k != "index"} for e in v1(http, "tag", "tag5", text, kwargs)]
    actual = [{k: v for k, v in asdict(e).items() if v is not None} for e in result]
    same(actual, expected)
    for entity in result:
        assert entity.start is not None and entity.end is not None and entity.end > entity.start


def test_hf_response_shapes(http: httpx.Client) -> None:
    one = http.post("/models/cls3", json={"inputs": TEXT, "parameters": {"top_k": None}})
    assert one.status_code == 200
    assert one.json() == [v1(http, "classify", "cls3", TEXT, {"top_k": None})]  # a list of lists for one input
    many = http.post("/models/cls3", json={"inputs": [TEXT, "Hi."]}).json()
    assert many == v1(http, "classify", "cls3", [TEXT, "Hi."])
    assert len(many) == 2 and all(isinstance(entry, list) for entry in many)

    qa_input = {"question": "Who?", "context": CONTEXT}
    assert http.post("/models/demo-qa", json={"inputs": qa_input}).json() == v1(http, "qa", "demo-qa", qa_input)
    assert http.post("/models/demo-tag", json={"inputs": TEXT}).json() == v1(http, "tag", "demo-tag", TEXT)
    disc = http.post("/models/disc-short", json={"inputs": TEXT}).json()
    assert disc == v1(http, "discriminate", "disc-short", TEXT)

    missing = http.post("/models/nope", json={"inputs": TEXT})
    assert missing.status_code == 404 and set(missing.json()) == {"error"}
    bad = http.post("/models/cls3", json={"inputs": []})
    assert bad.status_code == 422 and set(bad.json()) == {"error"}
