"""The typed gRPC API (`electra.v1.ElectraService`) end to end, with stubs generated from proto/:
every RPC gives what the REST endpoint gives for the same inputs and parameters; the stream
answers each request, tagged, as it completes; status codes, deadlines, overload, health and
reflection are checked on the wire."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from prometheus_client.parser import text_string_to_metric_families

from proto.electra.v1 import electra_pb2 as pb
from proto.electra.v1 import electra_pb2_grpc as pb_grpc
from tests.e2e.conftest import ServerProcess, start_server

PAIR = ("A man inspects the uniform of a figure in some East Asian country.", "The man is sleeping.")
TEXTS = ["I loved this film, the acting was superb.", "Ada Lovelace worked with Charles Babbage in London.", ""]
CONTEXT = (
    "Marie Curie was a Polish and naturalised-French physicist and chemist who conducted pioneering "
    "research on radioactivity. She was born in Warsaw in 1867 and moved to Paris in 1891, where she "
    "studied at the University of Paris. She won the Nobel Prize in Physics in 1903."
)
# Thousands of tokens: ~100 windows on qa-short (max_seq_len 64), well within the queue.
LONG_CONTEXT = " ".join(f"Paragraph {i}: the experiment number {i * 37} ran for {i + 3} days." for i in range(250))


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_target) as open_channel:
        yield open_channel


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.ElectraServiceStub:
    return pb_grpc.ElectraServiceStub(channel)


def rest(server: ServerProcess, task: str, model: str, inputs: Any, parameters: dict[str, Any] | None = None) -> Any:
    response = httpx.post(
        f"{server.url}/v1/{task}", json={"model": model, "inputs": inputs, "parameters": parameters}, timeout=60
    )
    assert response.status_code == 200, response.text
    return response.json()


# ---------------------------------------------------------------- proto -> REST shapes


def classify_json(response: pb.ClassifyResponse) -> list[Any]:
    return [[{"label": s.label, "score": s.score} for s in r.labels] for r in response.results]


def qa_json(response: pb.AnswerQuestionResponse) -> list[Any]:
    def one(result: pb.QaResult) -> Any:
        answers = [{"score": a.score, "start": a.start, "end": a.end, "answer": a.answer} for a in result.answers]
        return answers[0] if len(answers) == 1 else answers

    return [one(r) for r in response.results]


def tag_json(response: pb.TagResponse, strategy: str) -> list[Any]:
    def one(e: pb.Entity) -> dict[str, Any]:
        key = "entity" if strategy == "none" else "entity_group"
        entity = {key: e.label, "score": e.score, "word": e.word, "start": e.start, "end": e.end}
        if e.HasField("index"):
            entity["index"] = e.index
        return entity

    return [[one(e) for e in r.entities] for r in response.results]


def discriminate_json(response: pb.DiscriminateResponse) -> list[Any]:
    def scores(entries: Any) -> list[dict[str, Any]]:
        return [
            {"token": s.token, "start": s.start, "end": s.end, "score": s.score, "replaced": s.replaced}
            for s in entries
        ]

    return [
        {"tokens": scores(r.tokens), "words": scores(r.words), "replaced_rate": r.replaced_rate}
        for r in response.results
    ]


# ---------------------------------------------------------------- every RPC equals REST


@pytest.mark.parametrize("model", ["demo-classify", "cls3", "multilabel"])
@pytest.mark.parametrize(
    ("grpc_parameters", "rest_parameters"),
    [
        (pb.ClassifyParameters(), None),
        (pb.ClassifyParameters(top_k=0, function_to_apply="none"), {"top_k": None, "function_to_apply": "none"}),
        (pb.ClassifyParameters(top_k=2, function_to_apply="sigmoid"), {"top_k": 2, "function_to_apply": "sigmoid"}),
    ],
    ids=["defaults", "all-raw", "top2-sigmoid"],
)
def test_classify_equals_rest(
    server: ServerProcess,
    stub: pb_grpc.ElectraServiceStub,
    model: str,
    grpc_parameters: pb.ClassifyParameters,
    rest_parameters: dict[str, Any] | None,
) -> None:
    inputs = [pb.ClassifyInput(text=t) for t in TEXTS] + [pb.ClassifyInput(text=PAIR[0], text_pair=PAIR[1])]
    rest_inputs = [*TEXTS, {"text": PAIR[0], "text_pair": PAIR[1]}]
    response, call = stub.Classify.with_call(
        pb.ClassifyRequest(model=model, inputs=inputs, parameters=grpc_parameters), timeout=60
    )
    assert response.model == model
    assert classify_json(response) == rest(server, "classify", model, rest_inputs, rest_parameters)
    timings = dict(call.trailing_metadata())
    assert timings["x-model-name"] == model
    for key in ("x-total-time", "x-tokenization-time", "x-queue-time", "x-inference-time"):
        assert float(timings[key]) >= 0.0


@pytest.mark.parametrize("model", ["demo-qa", "qa-short"])
def test_answer_question_equals_rest(server: ServerProcess, stub: pb_grpc.ElectraServiceStub, model: str) -> None:
    questions = [("Where was Marie Curie born?", CONTEXT), ("When did she win the Nobel Prize?", CONTEXT)]
    request = pb.AnswerQuestionRequest(
        model=model,
        inputs=[pb.QaInput(question=q, context=c) for q, c in questions],
        parameters=pb.QaParameters(top_k=3, handle_impossible_answer=True, max_answer_len=10),
    )
    expected = rest(
        server,
        "qa",
        model,
        [{"question": q, "context": c} for q, c in questions],
        {"top_k": 3, "handle_impossible_answer": True, "max_answer_len": 10},
    )
    assert qa_json(stub.AnswerQuestion(request, timeout=60)) == expected
    # Defaults (top_k 1: one object per input in REST).
    default = stub.AnswerQuestion(pb.AnswerQuestionRequest(model=model, inputs=request.inputs[:1]), timeout=60)
    assert qa_json(default) == rest(server, "qa", model, [{"question": questions[0][0], "context": CONTEXT}])


@pytest.mark.parametrize("model", ["demo-tag", "tag5"])
@pytest.mark.parametrize("strategy", ["simple", "none", "max"])
def test_tag_equals_rest(server: ServerProcess, stub: pb_grpc.ElectraServiceStub, model: str, strategy: str) -> None:
    texts = [*TEXTS[:2], CONTEXT]
    parameters = pb.TagParameters(aggregation_strategy=strategy, ignore_labels=pb.LabelList(labels=[]))
    response = stub.Tag(pb.TagRequest(model=model, inputs=texts, parameters=parameters), timeout=60)
    expected = rest(server, "tag", model, texts, {"aggregation_strategy": strategy, "ignore_labels": []})
    assert tag_json(response, strategy) == expected
    assert sum(len(r.entities) for r in response.results) > 0
    # Unset ignore_labels is REST's default ["O"], not "keep everything".
    default = stub.Tag(pb.TagRequest(model=model, inputs=texts), timeout=60)
    assert tag_json(default, "simple") == rest(server, "tag", model, texts)


@pytest.mark.parametrize("model", ["demo-discriminator", "disc-short"])
def test_discriminate_equals_rest(server: ServerProcess, stub: pb_grpc.ElectraServiceStub, model: str) -> None:
    texts = [*TEXTS, CONTEXT]
    response = stub.Discriminate(
        pb.DiscriminateRequest(model=model, inputs=texts, parameters=pb.DiscriminateParameters(threshold=0.3)),
        timeout=60,
    )
    assert discriminate_json(response) == rest(server, "discriminate", model, texts, {"threshold": 0.3})


def test_model_may_be_left_out_when_one_model_serves_the_task(
    server: ServerProcess, stub: pb_grpc.ElectraServiceStub
) -> None:
    # The session server has one tag model per label set but two qa models: qa needs a name.
    with pytest.raises(grpc.RpcError) as caught:
        stub.AnswerQuestion(pb.AnswerQuestionRequest(inputs=[pb.QaInput(question="q?", context="c")]), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "several models serve qa" in caught.value.details()


# ---------------------------------------------------------------- the stream


def test_stream_tags_every_response_and_reports_failures_per_message(
    server: ServerProcess, stub: pb_grpc.ElectraServiceStub
) -> None:
    requests = [
        pb.StreamRequest(id="c1", classify=pb.ClassifyRequest(model="cls3", inputs=[pb.ClassifyInput(text=TEXTS[0])])),
        pb.StreamRequest(id="missing", tag=pb.TagRequest(model="no-such-model", inputs=["x"])),
        pb.StreamRequest(
            id="q1",
            answer_question=pb.AnswerQuestionRequest(
                model="demo-qa", inputs=[pb.QaInput(question="Where was she born?", context=CONTEXT)]
            ),
        ),
        pb.StreamRequest(id="empty"),
        pb.StreamRequest(
            id="bad-param",
            classify=pb.ClassifyRequest(
                model="cls3",
                inputs=[pb.ClassifyInput(text="x")],
                parameters=pb.ClassifyParameters(function_to_apply="?"),
            ),
        ),
        pb.StreamRequest(id="t1", tag=pb.TagRequest(model="tag5", inputs=[TEXTS[1]])),
        pb.StreamRequest(id="d1", discriminate=pb.DiscriminateRequest(model="disc-short", inputs=[TEXTS[0]])),
    ]
    responses = {r.id: r for r in stub.Stream(iter(requests), timeout=120)}
    assert set(responses) == {r.id for r in requests}

    failures = {rid: (r.status.code, r.WhichOneof("response")) for rid, r in responses.items() if r.status.code}
    assert failures == {
        "missing": (grpc.StatusCode.NOT_FOUND.value[0], None),
        "empty": (grpc.StatusCode.INVALID_ARGUMENT.value[0], None),
        "bad-param": (grpc.StatusCode.INVALID_ARGUMENT.value[0], None),
    }
    assert "no-such-model" in responses["missing"].status.message

    assert classify_json(responses["c1"].classify) == rest(server, "classify", "cls3", [TEXTS[0]])
    assert qa_json(responses["q1"].answer_question) == rest(
        server, "qa", "demo-qa", [{"question": "Where was she born?", "context": CONTEXT}]
    )
    assert tag_json(responses["t1"].tag, "simple") == rest(server, "tag", "tag5", [TEXTS[1]])
    assert discriminate_json(responses["d1"].discriminate) == rest(server, "discriminate", "disc-short", [TEXTS[0]])
    assert responses["c1"].timings.total_ms > 0


def test_stream_answers_in_completion_order(stub: pb_grpc.ElectraServiceStub) -> None:
    # A qa request with ~100 windows is sent first, a one-row classify second (other model,
    # other batcher): the classify answer must not wait behind the long one.
    slow = pb.StreamRequest(
        id="slow",
        answer_question=pb.AnswerQuestionRequest(
            model="qa-short", inputs=[pb.QaInput(question="Which experiment ran longest?", context=LONG_CONTEXT)]
        ),
    )
    fast = pb.StreamRequest(id="fast", classify=pb.ClassifyRequest(model="demo-classify", inputs=[pb.ClassifyInput()]))
    order = [r.id for r in stub.Stream(iter([slow, fast]), timeout=120)]
    assert order == ["fast", "slow"]


def test_stream_reports_undecodable_messages(channel: grpc.Channel) -> None:
    raw_stream = channel.stream_stream("/electra.v1.ElectraService/Stream")
    valid = pb.StreamRequest(id="ok", discriminate=pb.DiscriminateRequest(model="disc-short", inputs=["fine"]))
    responses = [
        pb.StreamResponse.FromString(raw) for raw in raw_stream(iter([b"\xff\xff", valid.SerializeToString()]))
    ]
    by_id = {r.id: r for r in responses}
    assert by_id["ok"].status.code == 0 and by_id["ok"].HasField("discriminate")
    assert by_id[""].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


# ---------------------------------------------------------------- status codes on the wire


def code_of(call: Any, *args: Any, **kwargs: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, **kwargs)
    return caught.value.code()


def test_status_codes(stub: pb_grpc.ElectraServiceStub, channel: grpc.Channel) -> None:
    one = [pb.ClassifyInput(text="x")]
    assert code_of(stub.Classify, pb.ClassifyRequest(model="nope", inputs=one)) == grpc.StatusCode.NOT_FOUND
    assert code_of(stub.Classify, pb.ClassifyRequest(model="cls3", inputs=[])) == grpc.StatusCode.INVALID_ARGUMENT
    bad = pb.ClassifyRequest(model="cls3", inputs=one, parameters=pb.ClassifyParameters(function_to_apply="cube"))
    assert code_of(stub.Classify, bad) == grpc.StatusCode.INVALID_ARGUMENT
    wrong_task = pb.TagRequest(model="cls3", inputs=["x"])
    assert code_of(stub.Tag, wrong_task) == grpc.StatusCode.INVALID_ARGUMENT
    too_long = pb.ClassifyRequest(model="demo-classify", inputs=[pb.ClassifyInput(text="word " * 2000)])
    assert code_of(stub.Classify, too_long) == grpc.StatusCode.INVALID_ARGUMENT
    # Bytes that are no ClassifyRequest: INVALID_ARGUMENT (grpc.aio's own deserializer says UNKNOWN).
    raw = channel.unary_unary("/electra.v1.ElectraService/Classify")
    assert code_of(raw, b"\xff\xff\xff", timeout=10) == grpc.StatusCode.INVALID_ARGUMENT


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def wait_for_metric(server: ServerProcess, name: str, above: float, **labels: str) -> float:
    deadline = time.monotonic() + 10
    while (value := metric(server, name, **labels)) <= above and time.monotonic() < deadline:
        time.sleep(0.1)
    return value


def test_deadline_exceeded_on_a_long_input(server: ServerProcess, stub: pb_grpc.ElectraServiceStub) -> None:
    counted = {"model": "qa-short", "protocol": "grpc", "code": "504"}  # the HTTP status, on every protocol
    before = metric(server, "electra_requests_total", **counted)
    request = pb.AnswerQuestionRequest(
        model="qa-short", inputs=[pb.QaInput(question="Which experiment ran longest?", context=LONG_CONTEXT)]
    )
    assert code_of(stub.AnswerQuestion, request, timeout=0.02) == grpc.StatusCode.DEADLINE_EXCEEDED
    # The server gave up on it too (it did not run the request to the end and count it OK).
    assert wait_for_metric(server, "electra_requests_total", before, **counted) == before + 1
    # And keeps serving.
    assert stub.AnswerQuestion(request, timeout=120).results[0].answers


def wait_for_queue(server: ServerProcess, model: str, empty: bool) -> float:
    """Poll the model's queue depth until it is (empty) or is not (not empty) zero; the last value."""
    deadline = time.monotonic() + 30
    while ((depth := metric(server, "electra_queue_depth", model=model)) == 0) != empty:
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    return depth


def drops(server: ServerProcess, model: str) -> dict[str, float]:
    return {reason: metric(server, "electra_dropped_total", model=model, reason=reason) for reason in
            ("cancelled", "deadline", "overload")}  # fmt: skip


@pytest.fixture(scope="module")
def slow_model(served_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server whose queue holds still: every model run takes 2 s (the simulated runtime), one row a
    batch, one batch running and one staged at a time. A row queued behind two others waits ~2 s,
    far longer than a cancel takes to arrive, on any host."""
    handle = start_server(
        served_repository, tmp_path_factory.mktemp("slow-model") / "server.log", "--models", "demo-classify",
        "--runtime", "simulated", "--sim-batch-ms", "2000", "--max-batch-size", "1",
        "--max-inflight-batches", "1", "--max-queue-delay-ms", "0", "--max-queue-size", "8",
    )  # fmt: skip
    try:
        handle.wait_ready()
        yield handle
    finally:
        handle.stop()


def test_cancelled_requests_never_reach_the_model(slow_model: ServerProcess) -> None:
    # Three rows go first: one runs, one is staged, one waits. A one-row request sent behind them
    # waits in the queue; cancelling it must drop its row unrun, and the first request is answered.
    blocker_request = pb.ClassifyRequest(model="demo-classify", inputs=[pb.ClassifyInput(text=t) for t in "abc"])
    short_request = pb.ClassifyRequest(model="demo-classify", inputs=[pb.ClassifyInput(text="cancel me")])
    cancelled = {"model": "demo-classify", "reason": "cancelled"}
    with grpc.insecure_channel(slow_model.grpc_target) as slow_channel:
        slow_stub = pb_grpc.ElectraServiceStub(slow_channel)
        before = metric(slow_model, "electra_dropped_total", **cancelled)
        runs_before = metric(slow_model, "electra_batch_size_count", model="demo-classify")
        blocker = slow_stub.Classify.future(blocker_request, timeout=60)
        assert wait_for_queue(slow_model, "demo-classify", empty=False) > 0, "the first request was never queued"
        waiting = slow_stub.Classify.future(short_request, timeout=60)
        deadline = time.monotonic() + 10
        while metric(slow_model, "electra_inflight_requests", protocol="grpc") < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.05)  # from handler to queue is a tokenization of two words, on the event loop
        assert not waiting.done(), "the short request was answered before the rows ahead of it ran"
        waiting.cancel()
        assert waiting.cancelled()
        dropped = wait_for_metric(slow_model, "electra_dropped_total", before, **cancelled) - before
        assert dropped == 1, f"{dropped} rows dropped as cancelled; all drops: {drops(slow_model, 'demo-classify')}"
        assert len(blocker.result().results) == 3
        # Nothing of it is left behind in the queue, and no fourth row ran.
        assert wait_for_queue(slow_model, "demo-classify", empty=True) == 0
        assert metric(slow_model, "electra_batch_size_count", model="demo-classify") == runs_before + 3


def test_a_stream_refused_for_overload_says_when_to_retry(slow_model: ServerProcess) -> None:
    # Five requests of four rows into a queue of eight that drains one row every 2 s: some must be
    # refused as overload, and each refusal carries its Retry-After, as a unary call's metadata does.
    def requests() -> Iterator[pb.StreamRequest]:
        for i in range(5):
            texts = [pb.ClassifyInput(text=f"overload {i} {j}") for j in range(4)]
            yield pb.StreamRequest(id=str(i), classify=pb.ClassifyRequest(model="demo-classify", inputs=texts))

    with grpc.insecure_channel(slow_model.grpc_target) as slow_channel:
        answers = list(pb_grpc.ElectraServiceStub(slow_channel).Stream(requests(), timeout=60))
    assert sorted(a.id for a in answers) == [str(i) for i in range(5)]
    refused = [a for a in answers if a.status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]]
    assert refused, [(a.id, a.status.code, a.status.message) for a in answers]
    assert all(a.status.HasField("retry_after_s") and a.status.retry_after_s > 0 for a in refused), refused
    answered = [a for a in answers if a.status.code == 0]
    assert answered and not any(a.status.HasField("retry_after_s") for a in answered)


def test_requests_are_counted_with_protocol_grpc(server: ServerProcess, stub: pb_grpc.ElectraServiceStub) -> None:
    labels = {"model": "disc-short", "task": "discriminate", "protocol": "grpc", "code": "200"}
    before = metric(server, "electra_requests_total", **labels)
    stub.Discriminate(pb.DiscriminateRequest(model="disc-short", inputs=["counted"]), timeout=30)
    assert metric(server, "electra_requests_total", **labels) == before + 1


# ---------------------------------------------------------------- health and reflection


def test_health_overall_and_per_model(server: ServerProcess, channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    models = [m["name"] for m in httpx.get(f"{server.url}/v1/models", timeout=10).json()["models"]]
    assert "demo-classify" in models and "qa-short" in models
    for name in ["", *models]:
        status = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING, name
    assert code_of(health.Check, health_pb2.HealthCheckRequest(service="no-such-model")) == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_both_apis(channel: grpc.Channel) -> None:
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {"electra.v1.ElectraService", "inference.GRPCInferenceService", "grpc.health.v1.Health"} <= services
    # Descriptors resolve without proto files (what grpcurl does).
    electra = database.FindFileContainingSymbol("electra.v1.ElectraService")
    assert electra.package == "electra.v1"
    assert database.FindFileContainingSymbol("inference.ModelConfig").package == "inference"


# ---------------------------------------------------------------- overload


@pytest.fixture(scope="module")
def tiny_queue_server(served_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One model, a queue of one row, and a long batching delay: a burst must overflow it."""
    log = tmp_path_factory.mktemp("overload") / "server.log"
    handle = start_server(
        served_repository, log, "--models", "demo-classify", "--max-queue-size", "1", "--max-queue-delay-ms", "50"
    )
    try:
        handle.wait_ready()
        yield handle
    finally:
        assert handle.stop() == 0, handle.log()[-3000:]


def test_overload_is_resource_exhausted_on_every_protocol(tiny_queue_server: ServerProcess) -> None:
    from tritonclient.grpc import service_pb2 as kserve  # tritonclient's copy: the wire format is the same

    text = "a long enough review of the product " * 20
    typed = pb.ClassifyRequest(model="demo-classify", inputs=[pb.ClassifyInput(text=text)])
    infer = kserve.ModelInferRequest(model_name="demo-classify")
    infer.inputs.add(name="TEXT", datatype="BYTES", shape=[1, 1]).contents.bytes_contents.append(text.encode())

    with grpc.insecure_channel(tiny_queue_server.grpc_target) as channel:
        typed_call = pb_grpc.ElectraServiceStub(channel).Classify
        kserve_call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        for call, request in ((typed_call, typed), (kserve_call, infer.SerializeToString())):
            futures = [call.future(request, timeout=60) for _ in range(30)]
            codes = [f.code() for f in futures]
            assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes, codes
            assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
            assert grpc.StatusCode.OK in codes

    body = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1, 1], "data": [text]}]}
    url = f"{tiny_queue_server.url}/v2/models/demo-classify/infer"
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda _: httpx.post(url, json=body, timeout=60), range(30)))
    statuses = [r.status_code for r in responses]
    assert 429 in statuses and set(statuses) <= {200, 429}, statuses
    refused = next(r for r in responses if r.status_code == 429)
    assert "overloaded" in refused.json()["error"] and "retry-after" in refused.headers
    assert metric(tiny_queue_server, "electra_dropped_total", model="demo-classify", reason="overload") > 0
