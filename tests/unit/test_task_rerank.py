"""Rerank: how a head's logits become scores, long documents by windows (aggregated) or cut, the
budget, and the three HTTP shapes (text-embeddings-inference, Jina / Cohere v1, Cohere v2) served
in process over the real loader, registry, batcher and service, with the fake runtime (a row's
logit counts one relevant token; see tests/fakes.py). Parity with sentence-transformers'
CrossEncoder on exported models is in tests/export (the oracle needs real weights)."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio
from tokenizers import Tokenizer

from server.api.http.exchange import HttpLimits
from server.app import build_asgi
from server.assembly import assemble
from server.core.manifest import Manifest
from server.core.service import InferenceService
from server.core.tasks import rerank
from server.core.tasks.rerank import Scoring
from server.settings import Settings
from tests.fakes import FakeRuntime, FakeRuntimes, manifest_json, write_model

LIMITS = HttpLimits(max_request_bytes=4 * 1024 * 1024, body_timeout_s=5)
FILLER = "the river bank was quiet in the morning and the birds sang over the water "


def manifest(labels: list[str], activation: str | None = None, relevant: str | None = None) -> Manifest:
    raw = manifest_json("r", "rerank", labels=labels)
    raw["score_activation"], raw["relevant_label"] = activation, relevant
    return Manifest.model_validate(raw)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize(
    ("labels", "activation", "relevant", "logits", "raw", "score"),
    [
        (["LABEL_0"], None, None, [1.5], 1.5, sigmoid(1.5)),  # CrossEncoder's default for one logit
        (["LABEL_0"], "sigmoid", None, [-3.0], -3.0, sigmoid(-3.0)),
        (["LABEL_0"], "identity", None, [4.25], 4.25, 4.25),
        (["irrelevant", "relevant"], "softmax", "relevant", [0.5, 2.0], 1.5, sigmoid(1.5)),
        (["relevant", "other"], "softmax", "relevant", [0.5, 2.0], -1.5, sigmoid(-1.5)),
        (["a", "b", "c"], "softmax", "b", [1.0, 3.0, 2.0], None, None),  # three: the softmax column
    ],
)
def test_scores_follow_the_manifest(
    labels: list[str], activation: str | None, relevant: str | None, logits: list[float], raw: Any, score: Any
) -> None:
    scoring = Scoring.of(manifest(labels, activation, relevant))
    got_raw = scoring.raw(np.array(logits))
    got = scoring.score(got_raw)
    if raw is None:
        exps = np.exp(np.array(logits) - max(logits))
        score = float(exps[labels.index(relevant)] / exps.sum())
    else:
        assert got_raw == pytest.approx(raw)
    assert got == pytest.approx(score, abs=1e-12)
    assert (scoring.score(-800.0) >= 0.0 and scoring.score(800.0) <= 1.0) or scoring.activation == "identity"


def test_ranking_is_stable_and_top_n_past_the_count_is_everything() -> None:
    values = [[{"score": s}] for s in (0.2, 0.9, 0.2, 0.5)]
    assert [i for i, _ in rerank.ranked(values)] == [1, 3, 0, 2]
    assert [i for i, _ in rerank.ranked(values, 2)] == [1, 3]
    assert len(rerank.ranked(values, 10)) == 4


# ------------------------------------------------------------------ served in process

Client = Callable[..., Awaitable[httpx.Response]]


@pytest_asyncio.fixture(loop_scope="function")  # the test's own loop (the default for fixtures is the session's)
async def served(tokenizer_file: Path, tmp_path: Path) -> AsyncIterator[tuple[Client, FakeRuntime, InferenceService]]:
    repository = tmp_path / "repository"
    write_model(repository, tokenizer_file, "ranker", "rerank", max_seq_len=32)
    write_model(repository, tokenizer_file, "clf", "classify")
    factory = FakeRuntimes()
    service = assemble(Settings(device="cpu", max_queue_delay_ms=1), repository, factory).service
    await service.start()
    runtime = factory.latest("ranker")
    runtime.relevant_id = Tokenizer.from_file(str(tokenizer_file)).token_to_id("gold")
    asgi = build_asgi(service, LIMITS, lambda: (b"", "text/plain"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://test") as http:

        async def post(path: str, body: Any) -> httpx.Response:
            return await http.post(path, json=body)

        yield post, runtime, service
    await service.drain(5)


async def test_tei_shape(served: Any) -> None:
    post, _, _ = served
    texts = ["nothing here", "gold", "gold and gold", ""]
    response = await post("/rerank", {"query": "where is it", "texts": texts})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [entry["index"] for entry in body] == [2, 1, 0, 3]
    assert body[0]["score"] == pytest.approx(sigmoid(3.0)) and "text" not in body[0]
    assert response.headers["x-model-name"] == "ranker"
    raw = (await post("/rerank", {"query": "q", "texts": texts, "raw_scores": True, "return_text": True})).json()
    assert raw[0] == {"index": 2, "score": pytest.approx(3.0), "text": "gold and gold"}


async def test_jina_and_cohere_shapes(served: Any) -> None:
    post, _, _ = served
    documents = ["plain", {"text": "gold"}, "more plain"]
    v1 = await post("/v1/rerank", {"model": "ranker", "query": "q", "documents": documents, "top_n": 3})
    assert v1.status_code == 200, v1.text
    body = v1.json()
    assert body["model"] == "ranker" and body["id"] == v1.headers["x-request-id"]
    assert body["results"][0] == {
        "index": 1,
        "relevance_score": pytest.approx(sigmoid(1.0)),
        "document": {"text": "gold"},
    }
    assert body["usage"]["total_tokens"] > 0 and body["meta"]["api_version"]["version"] == "1"
    # /rerank with `documents` is Jina's shape (as vLLM serves it); top_n past the count: every document.
    jina = (await post("/rerank", {"query": "q", "documents": ["a", "gold"], "top_n": 10})).json()
    assert [r["index"] for r in jina["results"]] == [1, 0]
    v2 = (await post("/v2/rerank", {"model": "ranker", "query": "q", "documents": ["a", "gold"], "top_n": 1})).json()
    assert v2["results"] == [{"index": 1, "relevance_score": pytest.approx(sigmoid(1.0))}]
    assert v2["meta"]["api_version"]["version"] == "2"


async def test_a_long_document_is_scored_by_its_best_window(served: Any) -> None:
    post, runtime, _ = served
    # The model's window is 32 tokens: the one relevant word sits in the last window of ~10.
    long_document = FILLER * 6 + "gold"
    body = {"query": "which", "texts": ["gold", long_document]}
    best = (await post("/rerank", {**body, "raw_scores": True})).json()
    assert {e["index"]: e["score"] for e in best} == {0: pytest.approx(1.0), 1: pytest.approx(1.0)}
    assert max(shape[1] for shape in runtime.calls) <= 32
    first = (await post("/rerank", {**body, "raw_scores": True, "aggregation": "first"})).json()
    assert {e["index"]: e["score"] for e in first}[1] == pytest.approx(-1.0)
    mean = (await post("/rerank", {**body, "raw_scores": True, "aggregation": "mean"})).json()
    assert -1.0 < {e["index"]: e["score"] for e in mean}[1] < 0.0
    # Cut instead (TEI's truncate): from the right the word is lost, from the left it is kept.
    right = (await post("/rerank", {**body, "raw_scores": True, "truncate": True})).json()
    assert {e["index"]: e["score"] for e in right}[1] == pytest.approx(-1.0)
    left = await post("/rerank", {**body, "raw_scores": True, "truncate": True, "truncation_direction": "Left"})
    assert {e["index"]: e["score"] for e in left.json()}[1] == pytest.approx(1.0)
    # max_tokens_per_doc cuts before windows: the word is gone.
    cut = (await post("/v2/rerank", {"query": "which", "documents": [long_document], "max_tokens_per_doc": 20})).json()
    assert cut["results"][0]["relevance_score"] == pytest.approx(sigmoid(-1.0))


@pytest.mark.parametrize(
    ("path", "body", "status", "says"),
    [
        ("/rerank", {"query": "", "texts": ["a"]}, 422, "query must not be empty"),
        ("/rerank", {"query": "q", "texts": []}, 422, "non-empty list"),
        ("/rerank", {"texts": ["a"]}, 422, "query must be a string"),
        ("/v1/rerank", {"query": "q", "documents": [3]}, 422, "documents[0] must be a string or an object"),
        ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": 0}, 400, "top_n must be a positive integer"),
        ("/v2/rerank", {"query": "q", "documents": ["a"] * 1001}, 413, "at most 1000"),
        ("/rerank", {"query": "q", "texts": ["a"], "aggregation": "median"}, 400, "aggregation"),
        ("/rerank", {"query": "q", "texts": ["a"], "truncation_direction": "up"}, 400, "Right or Left"),
        ("/rerank", {"query": "q", "texts": ["a"], "model": "clf"}, 400, "serves classify, not rerank"),
        ("/rerank", {"query": "q", "texts": ["a"], "model": "nope"}, 404, "not loaded"),
        ("/rerank", ["q"], 400, "JSON object"),
        ("/rerank", {"query": "q", "texts": ["a"], "stride": 40}, 400, "stride"),
        ("/rerank", {"query": "w " * 40, "texts": [FILLER * 3]}, 422, "leaves 0 tokens for a document"),
    ],
)
async def test_bad_requests_say_what_is_wrong(served: Any, path: str, body: Any, status: int, says: str) -> None:
    post, _, _ = served
    response = await post(path, body)
    assert response.status_code == status, response.text
    assert says in response.json()["error"]


async def test_the_window_budget_counts_documents_times_windows(tokenizer_file: Path, tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    write_model(repository, tokenizer_file, "ranker", "rerank", max_seq_len=32)
    service = assemble(Settings(device="cpu", max_windows_per_request=8), repository, FakeRuntimes()).service
    await service.start()
    asgi = build_asgi(service, LIMITS, lambda: (b"", "text/plain"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://test") as http:
        fits = await http.post("/rerank", json={"query": "q", "texts": ["a"] * 8})
        assert fits.status_code == 200
        refused = await http.post("/rerank", json={"query": "q", "texts": [FILLER * 6, FILLER * 6]})
        assert refused.status_code == 413 and "at most 8 are allowed" in refused.json()["error"]
    await service.drain(5)


async def test_several_rerank_models_need_a_name(tokenizer_file: Path, tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    for name in ("first", "second"):
        write_model(repository, tokenizer_file, name, "rerank")
    service = assemble(Settings(device="cpu"), repository, FakeRuntimes()).service
    await service.start()
    asgi = build_asgi(service, LIMITS, lambda: (b"", "text/plain"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://test") as http:
        unnamed = await http.post("/rerank", json={"query": "q", "texts": ["a"]})
        assert unnamed.status_code == 400 and "name one with 'model'" in unnamed.json()["error"]
        named = await http.post("/rerank", json={"query": "q", "texts": ["a"], "model": "second"})
        assert named.status_code == 200 and named.headers["x-model-name"] == "second"
    await service.drain(5)


# ------------------------------------------------------------------ typed gRPC and KServe v2


async def test_typed_grpc_unary_and_stream(served: Any) -> None:
    import grpc

    from proto.electra.v1 import electra_pb2 as pb
    from proto.electra.v1 import electra_pb2_grpc
    from server.api.grpc.typed import ElectraServicer

    _, _, service = served
    # The typed service alone: KServe's servicer would load this repository's inference protos,
    # which clash in one process with tritonclient's copy that the e2e tests import.
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((ElectraServicer(service).handlers(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = electra_pb2_grpc.ElectraServiceStub(channel)
            request = pb.RerankRequest(query="q", documents=["plain", "gold gold", "gold"], top_n=2)
            response = await stub.Rerank(request)
            assert response.model == "ranker" and [r.index for r in response.results] == [1, 2]
            assert response.results[0].raw_score == pytest.approx(3.0)
            assert response.results[0].score == pytest.approx(sigmoid(3.0)) and response.results[0].windows == 1
            long = pb.RerankRequest(
                query="q", documents=[FILLER * 6 + "gold"], parameters=pb.RerankParameters(aggregation="first")
            )
            assert (await stub.Rerank(long)).results[0].raw_score == pytest.approx(-1.0)
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.Rerank(pb.RerankRequest(query="", documents=["a"]))
            assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT

            async def requests() -> AsyncIterator[pb.StreamRequest]:
                yield pb.StreamRequest(id="a", rerank=pb.RerankRequest(query="q", documents=["x", "gold"]))
                yield pb.StreamRequest(id="b", rerank=pb.RerankRequest(query="q", documents=[]))

            answers = {r.id: r async for r in stub.Stream(requests())}
            assert [d.index for d in answers["a"].rerank.results] == [1, 0] and answers["a"].status.code == 0
            assert answers["b"].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    finally:
        await server.stop(0)


async def test_kserve_v2_takes_query_and_document_rows(served: Any) -> None:
    post, _, _ = served
    body = {
        "inputs": [
            {"name": "QUERY", "datatype": "BYTES", "shape": [2, 1], "data": ["q", "q"]},
            {"name": "DOCUMENT", "datatype": "BYTES", "shape": [2, 1], "data": ["plain", "gold"]},
        ]
    }
    response = await post("/v2/models/ranker/infer", body)
    assert response.status_code == 200, response.text
    rows = [json.loads(x) for x in response.json()["outputs"][0]["data"]]
    assert [round(r["raw_score"], 6) for r in rows] == [-1.0, 1.0] and rows[1]["windows"] == 1


async def test_the_cohere_sdk_reranks_against_v2(served: Any) -> None:
    """A client nobody here wrote: cohere's own SDK (ClientV2's async twin), pointed at /v2/rerank."""
    import cohere

    _, _, service = served
    asgi = build_asgi(service, LIMITS, lambda: (b"", "text/plain"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://test") as http:
        client = cohere.AsyncClientV2(api_key="unused", base_url="http://test", httpx_client=http)
        answer = await client.rerank(model="ranker", query="q", documents=["plain", "gold", "gold gold"], top_n=2)
    assert [r.index for r in answer.results] == [2, 1]
    assert answer.results[0].relevance_score == pytest.approx(sigmoid(3.0))
