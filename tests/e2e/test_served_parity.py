"""Served parity: every task endpoint, over HTTP to a real electra-serve, against the
`transformers` pipelines (and, for discriminate, ElectraForPreTraining) on the same weights.

The models are the test models of `served_repository` (cls3, multilabel, qa-short, tag5,
disc-short): shapes, label sets and heads the unit tests never used, with inputs long enough
to need stride windows. ORT fp32 vs torch fp32: labels, answers, entities and offsets equal,
scores within 1e-4.

Then "batched equals single": the same inputs fired concurrently (mixed lengths, several models)
give what each gives alone, scores within 1e-5.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import ServerProcess

SCORE_TOLERANCE = 1e-4
BATCH_TOLERANCE = 1e-5

# The checkpoints behind the served test models: the very kwargs of `served_repository`
# (make_checkpoint caches by kwargs, so these are the same directories).
CHECKPOINTS: dict[str, tuple[str, dict[str, Any]]] = {
    "cls3": ("classify", {"labels": ["contradiction", "entailment", "neutral"], "seed": 31}),
    "multilabel": (
        "classify",
        {"labels": ["w", "x", "y", "z"], "problem_type": "multi_label_classification", "seed": 32},
    ),
    "qa-short": ("qa", {"seed": 33, "max_position_embeddings": 64}),
    "tag5": ("tag", {"labels": ["O", "B-A", "I-A", "B-B", "I-B"], "seed": 34, "max_position_embeddings": 48}),
    "disc-short": ("discriminate", {"seed": 35, "max_position_embeddings": 40}),
    "ranker": ("rerank", {"seed": 36, "max_position_embeddings": 48}),
}

SHORT_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "",
    "Ada Lovelace worked with Charles Babbage in London.",
    "Unbelievably well-documented photosynthesis experiments, run by Dr. O'Brien!",
    "Zoë's café in São Paulo serves crêpes 🍕 and ☕ since 2001.",
    "ok",
]
# Several hundred tokens with sub-words, numbers and punctuation: many windows on 40-64 token models.
LONG_TEXT = " ".join(
    f"Section {i}: the unbelievably well-documented experiment number {i * 37} ran for {i + 3} days "
    f"in laboratory {chr(65 + i % 26)} near Zürich, where Dr. O'Brien's state-of-the-art "
    f"spectrometers measured {i * 1.5} micromoles."
    for i in range(9)
)
MEDIUM_TEXT = (
    "Marie Curie was a Polish and naturalised-French physicist and chemist who conducted pioneering "
    "research on radioactivity. She was born in Warsaw in 1867 and moved to Paris in 1891, where "
    "she studied at the Sorbonne."
)
QUESTIONS = ["Where was Marie Curie born?", "How many micromoles were measured?", "Who owned the spectrometers?"]


# ------------------------------------------------------------------ helpers


def plain(value: Any) -> Any:
    """Pipeline output as JSON would carry it: numpy scalars to Python, tuples to lists."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def assert_close(actual: Any, expected: Any, tolerance: float, path: str = "$") -> None:
    """Equal structure and non-float values; floats within `tolerance`."""
    if isinstance(expected, float) and not isinstance(expected, bool):
        assert isinstance(actual, int | float) and not isinstance(actual, bool), f"{path}: {actual!r} is no number"
        assert abs(actual - expected) <= tolerance, f"{path}: {actual} vs {expected} (tolerance {tolerance})"
    elif isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: expected an object, got {actual!r}"
        assert sorted(actual) == sorted(expected), f"{path}: keys {sorted(actual)} vs {sorted(expected)}"
        for key in expected:
            assert_close(actual[key], expected[key], tolerance, f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list), f"{path}: expected a list, got {actual!r}"
        assert len(actual) == len(expected), f"{path}: {len(actual)} items vs {len(expected)}\n{actual}\n{expected}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_close(a, e, tolerance, f"{path}[{i}]")
    else:
        assert actual == expected, f"{path}: {actual!r} vs {expected!r}"


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def checkpoint(make_checkpoint: Callable[..., Path], http: httpx.Client) -> Callable[[str], Path]:
    """The checkpoint a served model was exported from, after checking that the server says so."""
    described = {m["name"]: m for m in http.get("/v1/models").json()["models"]}

    def get(name: str) -> Path:
        task, kwargs = CHECKPOINTS[name]
        path = make_checkpoint(task, **kwargs)
        # Only the checkpoint directory's name is shown (paths stay in the logs); it is unique per session.
        assert described[name]["source"]["model"] == path.name, "served model and reference differ"
        assert described[name]["precision"] == "fp32" and described[name]["device"] == "cpu"
        return path

    return get


def post(http: httpx.Client, route: str, model: str, inputs: Any, parameters: dict[str, Any] | None = None) -> Any:
    body: dict[str, Any] = {"model": model, "inputs": inputs}
    if parameters is not None:
        body["parameters"] = parameters
    response = http.post(route, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def make_pipeline(task: str, path: Path, max_len: int) -> Any:
    from transformers import AutoTokenizer, pipeline

    tokenizer = AutoTokenizer.from_pretrained(str(path), model_max_length=max_len)
    return pipeline(task, model=str(path), tokenizer=tokenizer, device="cpu")


# ------------------------------------------------------------------ classify


@pytest.fixture(scope="module")
def cls3_pipe(checkpoint: Callable[[str], Path]) -> Any:
    return make_pipeline("text-classification", checkpoint("cls3"), 128)


@pytest.fixture(scope="module")
def multilabel_pipe(checkpoint: Callable[[str], Path]) -> Any:
    return make_pipeline("text-classification", checkpoint("multilabel"), 128)


CLASSIFY_INPUTS: list[Any] = [
    *SHORT_TEXTS,
    MEDIUM_TEXT,
    {"text": "A man is eating a sandwich.", "text_pair": "Someone eats food."},
    {"text": "The cat sat on the mat.", "text_pair": "Zoë's café is closed on Mondays."},
]


@pytest.mark.parametrize(
    "parameters",
    [
        None,
        {"top_k": None},
        {"top_k": 2, "function_to_apply": "sigmoid"},
        {"top_k": None, "function_to_apply": "none"},
        {"top_k": 3, "function_to_apply": "softmax"},
    ],
    ids=["default", "all-labels", "top2-sigmoid", "none", "top3-softmax"],
)
def test_classify_matches_pipeline(http: httpx.Client, cls3_pipe: Any, parameters: dict[str, Any] | None) -> None:
    served = post(http, "/v1/classify", "cls3", CLASSIFY_INPUTS, parameters)
    kwargs = dict(parameters or {})
    kwargs.setdefault("top_k", 1)  # the server's default; given explicitly, the pipeline answers lists
    expected = plain(cls3_pipe(CLASSIFY_INPUTS, **kwargs))
    assert_close(served, expected, SCORE_TOLERANCE)
    # One input (not a list) answers one list of {label, score}.
    single = post(http, "/v1/classify", "cls3", CLASSIFY_INPUTS[0], parameters)
    assert_close(single, expected[0], SCORE_TOLERANCE)
    pair = post(http, "/v1/classify", "cls3", CLASSIFY_INPUTS[-1], parameters)
    assert_close(pair, expected[-1], SCORE_TOLERANCE)


def test_classify_truncate_cuts_pairs_longest_first(http: httpx.Client, cls3_pipe: Any) -> None:
    long_pair = {"text": LONG_TEXT, "text_pair": "A short hypothesis about Zürich."}
    inputs = [LONG_TEXT, long_pair, {"text": "Short premise.", "text_pair": LONG_TEXT}]
    served = post(http, "/v1/classify", "cls3", inputs, {"truncate": True, "top_k": None})
    expected = plain(cls3_pipe(inputs, top_k=None, truncation=True))
    assert_close(served, expected, SCORE_TOLERANCE)


# ------------------------------------------------------------------ rerank: sentence-transformers' CrossEncoder

RERANK_QUERY = "Where was Marie Curie born?"
RERANK_DOCUMENTS = [SHORT_TEXTS[0], "Marie Curie was born in Warsaw.", SHORT_TEXTS[2], "", SHORT_TEXTS[4], "Paris"]


@pytest.fixture(scope="module")
def cross_encoder(checkpoint: Callable[[str], Path]) -> Any:
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(checkpoint("ranker")), device="cpu", max_length=48)


def test_rerank_matches_cross_encoder(http: httpx.Client, server: ServerProcess, cross_encoder: Any) -> None:
    pairs = [(RERANK_QUERY, d) for d in RERANK_DOCUMENTS]
    scores = cross_encoder.predict(pairs)  # its sigmoid: what the export recorded
    logits = cross_encoder.predict(pairs, activation_fn=lambda x: x)
    expected_order = [int(i) for i in np.argsort(-scores, kind="stable")]
    tei = http.post("/rerank", json={"query": RERANK_QUERY, "texts": RERANK_DOCUMENTS, "model": "ranker"})
    assert tei.status_code == 200, tei.text
    assert [e["index"] for e in tei.json()] == expected_order
    for entry in tei.json():
        assert abs(entry["score"] - float(scores[entry["index"]])) <= SCORE_TOLERANCE
    raw = http.post("/rerank", json={"query": RERANK_QUERY, "texts": RERANK_DOCUMENTS, "raw_scores": True}).json()
    for entry in raw:
        assert abs(entry["score"] - float(logits[entry["index"]])) <= SCORE_TOLERANCE
    cohere = http.post("/v2/rerank", json={"query": RERANK_QUERY, "documents": RERANK_DOCUMENTS, "top_n": 3}).json()
    assert [r["index"] for r in cohere["results"]] == expected_order[:3]
    # Typed gRPC gives the same numbers.
    import grpc

    from proto.electra.v1 import electra_pb2 as pb
    from proto.electra.v1 import electra_pb2_grpc

    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = electra_pb2_grpc.ElectraServiceStub(channel)
        answer = stub.Rerank(pb.RerankRequest(query=RERANK_QUERY, documents=RERANK_DOCUMENTS), timeout=60)
    assert [r.index for r in answer.results] == expected_order
    for result in answer.results:
        assert abs(result.raw_score - float(logits[result.index])) <= SCORE_TOLERANCE


def test_rerank_truncate_cuts_as_the_cross_encoder_does(http: httpx.Client, cross_encoder: Any) -> None:
    # CrossEncoder truncates a pair to its max_length longest first, as `truncate` does.
    documents = [LONG_TEXT, MEDIUM_TEXT]
    scores = cross_encoder.predict([(RERANK_QUERY, d) for d in documents])
    body = {"query": RERANK_QUERY, "texts": documents, "truncate": True, "model": "ranker"}
    served = {e["index"]: e["score"] for e in http.post("/rerank", json=body).json()}
    assert all(abs(served[i] - float(scores[i])) <= SCORE_TOLERANCE for i in range(2)), (served, scores)


def test_a_long_document_is_scored_by_its_windows(http: httpx.Client, cross_encoder: Any) -> None:
    """Without `truncate` a document longer than the window is split (the query whole in each); its
    max-aggregated score is the best window's, so never below the first window's (the cut one)."""
    body = {"query": RERANK_QUERY, "texts": [LONG_TEXT], "model": "ranker", "raw_scores": True}
    windowed = http.post("/rerank", json=body).json()[0]["score"]
    first = http.post("/rerank", json={**body, "aggregation": "first"}).json()[0]["score"]
    cut = http.post("/rerank", json={**body, "truncate": True}).json()[0]["score"]
    assert windowed >= first - 1e-6 and abs(first - cut) <= SCORE_TOLERANCE
    windows = http.post("/v1/rerank", json={"query": RERANK_QUERY, "documents": [LONG_TEXT]}).json()
    assert windows["usage"]["total_tokens"] > 48


# ------------------------------------------------------------------ zero-shot (cls3 is NLI-shaped)

ZERO_SHOT_TEXTS = [SHORT_TEXTS[0], SHORT_TEXTS[4], MEDIUM_TEXT, LONG_TEXT]


@pytest.fixture(scope="module")
def zero_shot_pipe(checkpoint: Callable[[str], Path]) -> Any:
    return make_pipeline("zero-shot-classification", checkpoint("cls3"), 128)


@pytest.mark.parametrize(
    "parameters",
    [
        {"candidate_labels": ["science", "cooking", "travel", "history"]},
        {"candidate_labels": "science, cooking", "multi_label": True},
        {"candidate_labels": ["physics"]},
        {"candidate_labels": ["a place", "a person"], "hypothesis_template": "This text is about {}."},
    ],
    ids=["softmax-over-labels", "multi-label-comma-string", "one-label", "template"],
)
def test_zero_shot_matches_pipeline(http: httpx.Client, zero_shot_pipe: Any, parameters: dict[str, Any]) -> None:
    served = post(http, "/v1/zero-shot", "cls3", ZERO_SHOT_TEXTS, parameters)
    expected = plain(zero_shot_pipe(ZERO_SHOT_TEXTS, **parameters))
    assert_close(served, expected, SCORE_TOLERANCE)
    # The Inference API's route, as huggingface_hub.InferenceClient.zero_shot_classification calls it.
    response = http.post("/models/cls3", json={"inputs": ZERO_SHOT_TEXTS[0], "parameters": parameters})
    assert response.status_code == 200, response.text
    assert_close(response.json(), expected[0], SCORE_TOLERANCE)


def test_zero_shot_through_the_inference_client(server: ServerProcess, zero_shot_pipe: Any) -> None:
    from huggingface_hub import InferenceClient

    client = InferenceClient(model=f"{server.url}/models/cls3")
    labels = ["science", "cooking", "travel"]
    answer = client.zero_shot_classification(MEDIUM_TEXT, labels)
    expected = zero_shot_pipe(MEDIUM_TEXT, labels)
    assert [a.label for a in answer] == expected["labels"]
    assert np.allclose([a.score for a in answer], expected["scores"], atol=SCORE_TOLERANCE)


@pytest.mark.parametrize(
    ("model", "parameters", "says"),
    [
        ("cls3", {}, "candidate_labels is required"),
        ("cls3", {"candidate_labels": ["a"], "hypothesis_template": "no slot"}, "has no {}"),
        ("multilabel", {"candidate_labels": ["a"]}, "entailment label"),
        ("tag5", {"candidate_labels": ["a"]}, "serves tag, not classify"),
    ],
)
def test_zero_shot_refusals(http: httpx.Client, model: str, parameters: dict[str, Any], says: str) -> None:
    response = http.post("/v1/zero-shot", json={"model": model, "inputs": "a text", "parameters": parameters})
    assert response.status_code == 400 and says in response.json()["error"], response.text


@pytest.mark.parametrize("parameters", [None, {"function_to_apply": "softmax"}], ids=["default-sigmoid", "softmax"])
def test_multilabel_defaults_to_sigmoid_like_the_pipeline(
    http: httpx.Client, multilabel_pipe: Any, parameters: dict[str, Any] | None
) -> None:
    texts = [*SHORT_TEXTS, MEDIUM_TEXT]
    served = post(http, "/v1/classify", "multilabel", texts, {**(parameters or {}), "top_k": None})
    expected = plain(multilabel_pipe(texts, top_k=None, **(parameters or {})))
    assert_close(served, expected, SCORE_TOLERANCE)
    if parameters is None:  # sigmoid scores of a multi-label head do not sum to 1
        assert any(abs(sum(e["score"] for e in entry) - 1.0) > 0.05 for entry in served)


# ------------------------------------------------------------------ qa


@pytest.fixture(scope="module")
def qa_pipe(checkpoint: Callable[[str], Path]) -> Any:
    return make_pipeline("question-answering", checkpoint("qa-short"), 64)


QA_ITEMS = [
    {"question": QUESTIONS[0], "context": MEDIUM_TEXT},
    {"question": QUESTIONS[1], "context": LONG_TEXT},
    {"question": QUESTIONS[2], "context": LONG_TEXT},
    {"question": "Short?", "context": "Tiny context."},
]


@pytest.mark.parametrize(
    "parameters",
    [
        None,
        {"top_k": 3},
        {"doc_stride": 16, "top_k": 2},
        {"max_answer_len": 4, "top_k": 3},
        {"handle_impossible_answer": True, "top_k": 3},
        {"handle_impossible_answer": True},
        {"align_to_words": False, "top_k": 3},
        {"max_seq_len": 40, "doc_stride": 10, "top_k": 2},
        {"max_question_len": 4, "top_k": 2},
    ],
    ids=["default", "top3", "stride16", "answer-len4", "impossible-top3", "impossible", "no-align", "seq40", "qlen4"],
)
def test_qa_matches_pipeline(http: httpx.Client, qa_pipe: Any, parameters: dict[str, Any] | None) -> None:
    served = post(http, "/v1/qa", "qa-short", QA_ITEMS, parameters)
    assert isinstance(served, list) and len(served) == len(QA_ITEMS)
    for i, item in enumerate(QA_ITEMS):
        expected = plain(qa_pipe(question=item["question"], context=item["context"], **(parameters or {})))
        assert_close(served[i], expected, SCORE_TOLERANCE, f"$[{i}]")
    # One input (not a list) answers that input's result alone.
    alone = post(http, "/v1/qa", "qa-short", QA_ITEMS[1], parameters)
    assert_close(alone, served[1], SCORE_TOLERANCE)


def test_qa_long_context_is_windowed_not_cut(http: httpx.Client, qa_pipe: Any) -> None:
    """An answer can come from the end of a context ten windows long."""
    context = LONG_TEXT
    served = post(http, "/v1/qa", "qa-short", {"question": QUESTIONS[1], "context": context}, {"top_k": 50})
    assert max(answer["end"] for answer in served) > len(context) // 2
    expected = plain(qa_pipe(question=QUESTIONS[1], context=context, top_k=50))
    assert_close(served, expected, SCORE_TOLERANCE)


# ------------------------------------------------------------------ tag


@pytest.fixture(scope="module")
def tag_pipe(checkpoint: Callable[[str], Path]) -> Any:
    return make_pipeline("token-classification", checkpoint("tag5"), 48)


TAG_SHORT = [SHORT_TEXTS[0], SHORT_TEXTS[2], SHORT_TEXTS[3], SHORT_TEXTS[4], ""]
TAG_LONG = [MEDIUM_TEXT, LONG_TEXT]
AUTO_STRIDE = 48 // 4  # the server's stride when none is given: a quarter of the model's length


@pytest.mark.parametrize("strategy", ["simple", "first", "average", "max"])
@pytest.mark.parametrize("ignore_labels", [None, []], ids=["ignore-O", "ignore-nothing"])
def test_tag_matches_pipeline(
    http: httpx.Client, tag_pipe: Any, strategy: str, ignore_labels: list[str] | None
) -> None:
    parameters: dict[str, Any] = {"aggregation_strategy": strategy}
    extra: dict[str, Any] = {}
    if ignore_labels is not None:
        parameters["ignore_labels"] = extra["ignore_labels"] = ignore_labels
    texts = TAG_SHORT + TAG_LONG
    served = post(http, "/v1/tag", "tag5", texts, parameters)
    expected = plain(tag_pipe(texts, aggregation_strategy=strategy, stride=AUTO_STRIDE, **extra))
    assert_close(served, expected, SCORE_TOLERANCE)
    assert any(served[len(TAG_SHORT) :]), "long texts gave no entity at all: nothing was compared"


def test_tag_explicit_stride_matches_pipeline(http: httpx.Client, tag_pipe: Any) -> None:
    parameters = {"aggregation_strategy": "average", "stride": 20, "ignore_labels": ["O", "B-B"]}
    served = post(http, "/v1/tag", "tag5", LONG_TEXT, parameters)
    expected = plain(tag_pipe(LONG_TEXT, aggregation_strategy="average", stride=20, ignore_labels=["O", "B-B"]))
    assert_close(served, expected, SCORE_TOLERANCE)


@pytest.mark.parametrize("ignore_labels", [None, []], ids=["ignore-O", "ignore-nothing"])
def test_tag_strategy_none_matches_pipeline(http: httpx.Client, tag_pipe: Any, ignore_labels: list[str] | None) -> None:
    # The pipeline refuses to window with strategy none: compare on texts that fit.
    parameters: dict[str, Any] = {"aggregation_strategy": "none"}
    extra: dict[str, Any] = {}
    if ignore_labels is not None:
        parameters["ignore_labels"] = extra["ignore_labels"] = ignore_labels
    served = post(http, "/v1/tag", "tag5", TAG_SHORT, parameters)
    expected = plain(tag_pipe(TAG_SHORT, aggregation_strategy="none", **extra))
    assert_close(served, expected, SCORE_TOLERANCE)
    assert all("index" in entity for entities in served for entity in entities)


def test_tag_strategy_none_on_long_text_gives_every_token_once(http: httpx.Client, tag_pipe: Any) -> None:
    served = post(http, "/v1/tag", "tag5", LONG_TEXT, {"aggregation_strategy": "none", "ignore_labels": []})
    encoding = tag_pipe.tokenizer(LONG_TEXT, return_offsets_mapping=True, return_special_tokens_mask=True)
    text_tokens = [i for i, special in enumerate(encoding["special_tokens_mask"]) if not special]
    assert [e["index"] for e in served] == text_tokens
    assert [(e["start"], e["end"]) for e in served] == [tuple(encoding["offset_mapping"][i]) for i in text_tokens]


# ------------------------------------------------------------------ discriminate


@pytest.fixture(scope="module")
def discriminator(checkpoint: Callable[[str], Path]) -> tuple[Any, Any]:
    from transformers import AutoTokenizer, ElectraForPreTraining

    path = checkpoint("disc-short")
    tokenizer = AutoTokenizer.from_pretrained(str(path), model_max_length=40)
    return tokenizer, ElectraForPreTraining.from_pretrained(str(path)).eval()


def reference_discriminate(tokenizer: Any, model: Any, text: str, threshold: float, max_len: int = 40) -> dict:
    """sigmoid(ElectraForPreTraining logits) per token. A text longer than the model is read in
    windows overlapping by a quarter of its length; each token is scored by the window where it
    has the most context (min(left, right) + 0.01 * window length; the first wins ties)."""
    import torch

    full = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = [tuple(o) for o in full["offset_mapping"]]
    windows = tokenizer(
        text,
        truncation=True,
        max_length=max_len,
        stride=max_len // 4,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    best = [(-np.inf, 0.0)] * len(offsets)  # (context score, probability) per text token
    cursor = 0
    for k in range(len(windows["input_ids"])):
        ids = torch.tensor([windows["input_ids"][k]])
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].numpy()
        positions = [i for i, special in enumerate(windows["special_tokens_mask"][k]) if not special]
        first = tuple(windows["offset_mapping"][k][positions[0]]) if positions else None
        start = offsets.index(first, cursor) if positions else 0
        cursor = start
        for local, position in enumerate(positions):
            context = min(local, len(positions) - 1 - local) + 0.01 * len(positions)
            if context > best[start + local][0]:
                best[start + local] = (context, float(1 / (1 + np.exp(-logits[position]))))
    scores = [probability for _, probability in best]
    tokens = [
        {
            "token": tokenizer.convert_ids_to_tokens(token_id),
            "start": s,
            "end": e,
            "score": p,
            "replaced": p > threshold,
        }
        for token_id, (s, e), p in zip(full["input_ids"], offsets, scores, strict=True)
    ]
    words: list[dict[str, Any]] = []
    word_ids = full.word_ids()
    for i, token in enumerate(tokens):
        if i and word_ids[i] is not None and word_ids[i] == word_ids[i - 1]:
            word = words[-1]
            word["end"] = max(word["end"], token["end"])
            word["score"] = max(word["score"], token["score"])
        else:
            words.append({"start": token["start"], "end": token["end"], "score": token["score"]})
    for word in words:
        word["token"] = text[word["start"] : word["end"]]
        word["replaced"] = word["score"] > threshold
    replaced = sum(t["replaced"] for t in tokens)
    return {"tokens": tokens, "words": words, "replaced_rate": replaced / len(tokens) if tokens else 0.0}


@pytest.mark.parametrize("threshold", [None, 0.3, 0.9])
def test_discriminate_matches_electra_for_pretraining(
    http: httpx.Client, discriminator: tuple[Any, Any], threshold: float | None
) -> None:
    tokenizer, model = discriminator
    texts = [*SHORT_TEXTS, MEDIUM_TEXT, LONG_TEXT]
    parameters = None if threshold is None else {"threshold": threshold}
    served = post(http, "/v1/discriminate", "disc-short", texts, parameters)
    assert len(served) == len(texts)
    for i, text in enumerate(texts):
        expected = reference_discriminate(tokenizer, model, text, 0.5 if threshold is None else threshold)
        assert_close(served[i], expected, SCORE_TOLERANCE, f"$[{i}]")
        for token in served[i]["tokens"]:
            assert token["token"] not in ("[CLS]", "[SEP]", "[PAD]")
    long = served[-1]["tokens"]
    assert long[-1]["end"] == len(LONG_TEXT), "the end of a long text was cut"


# ------------------------------------------------------------------ batched equals single


def batch_requests() -> list[tuple[str, dict[str, Any]]]:
    """Mixed lengths and models; each request one input, so that any batch of >1 rows is cross-request."""
    words = LONG_TEXT.split()
    requests: list[tuple[str, dict[str, Any]]] = []
    for n in (1, 3, 7, 12, 20, 35, 60, 90):
        text = " ".join(words[:n])
        requests.append(
            ("/v1/classify", {"model": "cls3", "inputs": text, "parameters": {"top_k": None, "truncate": True}})
        )
        requests.append(("/v1/classify", {"model": "demo-classify", "inputs": text}))
        requests.append(("/v1/discriminate", {"model": "disc-short", "inputs": text}))
    for text in SHORT_TEXTS:
        requests.append(("/v1/classify", {"model": "multilabel", "inputs": text, "parameters": {"top_k": None}}))
        requests.append(("/v1/tag", {"model": "tag5", "inputs": text, "parameters": {"aggregation_strategy": "none"}}))
    for item in QA_ITEMS:
        requests.append(("/v1/qa", {"model": "qa-short", "inputs": item, "parameters": {"top_k": 3}}))
    for strategy in ("simple", "max"):
        requests.append(
            ("/v1/tag", {"model": "tag5", "inputs": [MEDIUM_TEXT, LONG_TEXT], "parameters": {
                "aggregation_strategy": strategy, "ignore_labels": []}})
        )  # fmt: skip
    requests.append(("/v1/classify", {"model": "cls3", "inputs": [LONG_TEXT[:200], "x", MEDIUM_TEXT]}))
    requests.append(("/v1/discriminate", {"model": "demo-discriminator", "inputs": [MEDIUM_TEXT, "Hi."]}))
    return requests


def histogram(metrics_text: str, family: str, model: str) -> tuple[float, float]:
    """(count of observations, count in the le=1 bucket) of one model's histogram."""
    count = ones = 0.0
    for metric in text_string_to_metric_families(metrics_text):
        if metric.name != family:
            continue
        for sample in metric.samples:
            if sample.labels.get("model") != model:
                continue
            if sample.name.endswith("_count"):
                count = sample.value
            elif sample.name.endswith("_bucket") and sample.labels.get("le") == "1.0":
                ones = sample.value
    return count, ones


async def test_batched_equals_single(server: ServerProcess, http: httpx.Client) -> None:
    # Identical inputs arriving together are sure to share a run even under a CPU padding limit,
    # so the batching checked below cannot pass vacuously.
    twins = [("/v1/classify", {"model": "cls3", "inputs": "The same sentence, sent many times at once."})] * 8
    requests = batch_requests() + twins
    alone = [post(http, route, body["model"], body["inputs"], body.get("parameters")) for route, body in requests]

    before = http.get("/metrics").text
    async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=httpx.Limits(max_connections=200)) as client:
        for _ in range(2):  # twice, shuffled differently, so each input meets other neighbours
            order = list(range(len(requests)))
            np.random.default_rng(len(order)).shuffle(order)
            responses = await asyncio.gather(*(client.post(requests[i][0], json=requests[i][1]) for i in order))
            for i, response in zip(order, responses, strict=True):
                assert response.status_code == 200, response.text
                assert_close(response.json(), alone[i], BATCH_TOLERANCE, f"request {i} {requests[i]}")
    after = http.get("/metrics").text

    # Concurrent single-input requests really shared model runs (else nothing was tested).
    count_before, ones_before = histogram(before, "electra_batch_size", "cls3")
    count_after, ones_after = histogram(after, "electra_batch_size", "cls3")
    assert count_after > count_before
    assert (count_after - count_before) > (ones_after - ones_before), "every cls3 batch had a single row"
