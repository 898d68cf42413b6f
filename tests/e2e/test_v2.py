"""KServe v2 / Open Inference Protocol end to end, driven by Triton's own clients:
`tritonclient.grpc` and `tritonclient.http` (binary and JSON tensors) read health, metadata,
config and statistics and infer; RESULT is what REST (and the typed gRPC API) return for the
same input; LOGITS are the raw logits; status codes are checked on the wire.

Our `inference` stubs are not imported here: they share message names with tritonclient's copy
(see tests/unit/test_proto_stubs.py), whose messages this file uses.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import orjson
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from google.protobuf import json_format
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2 as kserve
from tritonclient.utils import InferenceServerException

from proto.electra.v1 import electra_pb2 as pb
from proto.electra.v1 import electra_pb2_grpc as pb_grpc
from tests.e2e.conftest import ServerProcess

TEXTS = [
    "I loved this film, the acting was superb.",
    "Ada Lovelace worked with Charles Babbage in London.",
    "",
    "Zoë's café in São Paulo serves crêpes 🍕 since 2001.",
]
CONTEXT = (
    "Marie Curie was a Polish and naturalised-French physicist and chemist who conducted pioneering "
    "research on radioactivity. She was born in Warsaw in 1867 and moved to Paris in 1891."
)
QUESTIONS = ["Where was Marie Curie born?", "When did she move to Paris?"]
LONG_CONTEXT = " ".join(f"Paragraph {i}: the experiment number {i * 37} ran for {i + 3} days." for i in range(250))


@pytest.fixture(scope="module")
def grpc_client(server: ServerProcess) -> Iterator[tgrpc.InferenceServerClient]:
    client = tgrpc.InferenceServerClient(server.grpc_target)
    yield client
    client.close()


@pytest.fixture(scope="module")
def http_client(server: ServerProcess) -> Iterator[thttp.InferenceServerClient]:
    client = thttp.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    yield client
    client.close()


def rest(server: ServerProcess, task: str, model: str, inputs: Any, parameters: dict[str, Any] | None = None) -> Any:
    response = httpx.post(
        f"{server.url}/v1/{task}", json={"model": model, "inputs": inputs, "parameters": parameters}, timeout=60
    )
    assert response.status_code == 200, response.text
    return response.json()


def column(values: list[str]) -> np.ndarray:
    return np.array([[v.encode()] for v in values], dtype=np.object_)


def tensors(module: Any, columns: dict[str, list[str]], binary: bool = True) -> list[Any]:
    inputs = []
    for name, values in columns.items():
        tensor = module.InferInput(name, [len(values), 1], "BYTES")
        if module is thttp:
            tensor.set_data_from_numpy(column(values), binary_data=binary)
        else:
            tensor.set_data_from_numpy(column(values))
        inputs.append(tensor)
    return inputs


def results(result: Any) -> list[Any]:
    """RESULT rows, parsed (tritonclient gives bytes for binary outputs, str for JSON ones)."""
    rows = result.as_numpy("RESULT")
    assert rows.shape[1:] == (1,)
    return [orjson.loads(row[0]) for row in rows]


# Each case: model, task, v2 input columns, the REST `inputs` for the same rows.
CASES = [
    ("demo-classify", "classify", {"TEXT": TEXTS}, TEXTS),
    (
        "cls3",
        "classify",
        {"TEXT": TEXTS[:2], "TEXT_PAIR": ["The man is sleeping.", ""]},
        [{"text": TEXTS[0], "text_pair": "The man is sleeping."}, TEXTS[1]],
    ),
    ("multilabel", "classify", {"TEXT": TEXTS[:2]}, TEXTS[:2]),
    (
        "demo-qa",
        "qa",
        {"QUESTION": QUESTIONS, "CONTEXT": [CONTEXT, CONTEXT]},
        [{"question": q, "context": CONTEXT} for q in QUESTIONS],
    ),
    (
        "qa-short",
        "qa",
        {"QUESTION": QUESTIONS[:1], "CONTEXT": [CONTEXT]},
        [{"question": QUESTIONS[0], "context": CONTEXT}],
    ),
    ("demo-tag", "tag", {"TEXT": [*TEXTS, CONTEXT]}, [*TEXTS, CONTEXT]),
    ("tag5", "tag", {"TEXT": [CONTEXT]}, [CONTEXT]),
    ("demo-discriminator", "discriminate", {"TEXT": TEXTS}, TEXTS),
    ("disc-short", "discriminate", {"TEXT": [CONTEXT]}, [CONTEXT]),
]


@pytest.mark.parametrize(("model", "task", "columns", "rest_inputs"), CASES, ids=[c[0] for c in CASES])
def test_v2_results_equal_rest_over_every_client(
    server: ServerProcess,
    grpc_client: tgrpc.InferenceServerClient,
    http_client: thttp.InferenceServerClient,
    model: str,
    task: str,
    columns: dict[str, list[str]],
    rest_inputs: list[Any],
) -> None:
    expected = rest(server, task, model, rest_inputs)
    over_grpc = grpc_client.infer(model, tensors(tgrpc, columns), request_id="r-1")
    assert over_grpc.get_response().id == "r-1"
    assert results(over_grpc) == expected
    for binary in (True, False):
        outputs = [thttp.InferRequestedOutput("RESULT", binary_data=binary)]
        over_http = http_client.infer(model, tensors(thttp, columns, binary), outputs=outputs)
        assert results(over_http) == expected, f"binary={binary}"


def test_typed_grpc_rest_and_v2_agree(server: ServerProcess, grpc_client: tgrpc.InferenceServerClient) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.ElectraServiceStub(channel)
        typed = stub.Discriminate(pb.DiscriminateRequest(model="disc-short", inputs=TEXTS), timeout=60)
        tagged = stub.Tag(pb.TagRequest(model="demo-tag", inputs=TEXTS), timeout=60)
    v2_disc = results(grpc_client.infer("disc-short", tensors(tgrpc, {"TEXT": TEXTS})))
    v2_tag = results(grpc_client.infer("demo-tag", tensors(tgrpc, {"TEXT": TEXTS})))
    assert v2_disc == rest(server, "discriminate", "disc-short", TEXTS)
    assert v2_tag == rest(server, "tag", "demo-tag", TEXTS)
    assert [r["replaced_rate"] for r in v2_disc] == [r.replaced_rate for r in typed.results]
    assert [[(t["token"], t["score"]) for t in r["tokens"]] for r in v2_disc] == [
        [(t.token, t.score) for t in r.tokens] for r in typed.results
    ]
    assert [[(e["entity_group"], e["score"], e["start"]) for e in r] for r in v2_tag] == [
        [(e.label, e.score, e.start) for e in r.entities] for r in tagged.results
    ]


@pytest.mark.parametrize("model", ["demo-classify", "cls3", "multilabel"])
def test_logits_are_the_raw_logits(
    server: ServerProcess,
    grpc_client: tgrpc.InferenceServerClient,
    http_client: thttp.InferenceServerClient,
    model: str,
) -> None:
    labels = next(m["labels"] for m in httpx.get(f"{server.url}/v1/models").json()["models"] if m["name"] == model)
    raw = rest(server, "classify", model, TEXTS, {"top_k": None, "function_to_apply": "none"})
    expected = np.array([[next(e["score"] for e in row if e["label"] == label) for label in labels] for row in raw])
    for client, module in ((grpc_client, tgrpc), (http_client, thttp)):
        logits = client.infer(model, tensors(module, {"TEXT": TEXTS})).as_numpy("LOGITS")
        assert logits.dtype == np.float32 and logits.shape == (len(TEXTS), len(labels))
        np.testing.assert_array_equal(logits, expected.astype(np.float32))


def test_requested_outputs_are_honoured(
    grpc_client: tgrpc.InferenceServerClient, http_client: thttp.InferenceServerClient
) -> None:
    columns = {"TEXT": TEXTS[:2]}
    only_logits = grpc_client.infer(
        "demo-classify", tensors(tgrpc, columns), outputs=[tgrpc.InferRequestedOutput("LOGITS")]
    )
    assert [o.name for o in only_logits.get_response().outputs] == ["LOGITS"]
    only_result = http_client.infer(
        "demo-classify", tensors(thttp, columns), outputs=[thttp.InferRequestedOutput("RESULT", binary_data=False)]
    )
    assert [o["name"] for o in only_result.get_response()["outputs"]] == ["RESULT"]
    assert only_result.as_numpy("LOGITS") is None
    both = grpc_client.infer("demo-classify", tensors(tgrpc, columns))
    assert {o.name for o in both.get_response().outputs} == {"RESULT", "LOGITS"}


def test_flat_shapes_are_accepted(server: ServerProcess, grpc_client: tgrpc.InferenceServerClient) -> None:
    body = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [2], "data": TEXTS[:2]}]}
    response = httpx.post(f"{server.url}/v2/models/demo-discriminator/infer", json=body, timeout=60)
    assert response.status_code == 200, response.text
    (result,) = response.json()["outputs"]
    assert result["shape"] == [2]
    assert [orjson.loads(r) for r in result["data"]] == rest(server, "discriminate", "demo-discriminator", TEXTS[:2])
    text = tgrpc.InferInput("TEXT", [2], "BYTES")
    text.set_data_from_numpy(np.array([t.encode() for t in TEXTS[:2]], dtype=np.object_))
    over_grpc = grpc_client.infer("demo-discriminator", [text])
    assert over_grpc.as_numpy("RESULT").shape == (2,)


def test_stream_infer_answers_each_request(grpc_client: tgrpc.InferenceServerClient, server: ServerProcess) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    grpc_client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i, text in enumerate(TEXTS):
            grpc_client.async_stream_infer("demo-tag", tensors(tgrpc, {"TEXT": [text]}), request_id=f"s{i}")
        grpc_client.async_stream_infer("no-such-model", tensors(tgrpc, {"TEXT": ["x"]}), request_id="bad")
        received = [answers.get(timeout=60) for _ in range(len(TEXTS) + 1)]
    finally:
        grpc_client.stop_stream()
    errors = [error for _, error in received if error is not None]
    assert len(errors) == 1 and "no-such-model" in errors[0].message()
    by_id = {result.get_response().id: results(result) for result, error in received if error is None}
    expected = rest(server, "tag", "demo-tag", TEXTS)
    assert by_id == {f"s{i}": [expected[i]] for i in range(len(TEXTS))}


# ---------------------------------------------------------------- metadata, config, statistics


def test_health_and_server_metadata(
    grpc_client: tgrpc.InferenceServerClient, http_client: thttp.InferenceServerClient, server: ServerProcess
) -> None:
    for client in (grpc_client, http_client):
        assert client.is_server_live() and client.is_server_ready()
        for model in ("demo-classify", "demo-qa", "demo-tag", "demo-discriminator", "qa-short"):
            assert client.is_model_ready(model)
    extensions = set(http_client.get_server_metadata()["extensions"])
    assert {"binary_tensor_data", "model_configuration", "statistics"} <= extensions
    assert set(grpc_client.get_server_metadata().extensions) == extensions
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    assert httpx.get(f"{server.url}/v2/models/nope/ready").status_code == 404


@pytest.mark.parametrize(
    ("model", "inputs", "outputs"),
    [
        ("demo-classify", ["TEXT", "TEXT_PAIR"], {"RESULT": [-1, 1], "LOGITS": [-1, 2]}),
        ("cls3", ["TEXT", "TEXT_PAIR"], {"RESULT": [-1, 1], "LOGITS": [-1, 3]}),
        ("demo-qa", ["QUESTION", "CONTEXT"], {"RESULT": [-1, 1]}),
        ("demo-tag", ["TEXT"], {"RESULT": [-1, 1]}),
        ("demo-discriminator", ["TEXT"], {"RESULT": [-1, 1]}),
    ],
)
def test_model_metadata_and_config(
    grpc_client: tgrpc.InferenceServerClient,
    http_client: thttp.InferenceServerClient,
    model: str,
    inputs: list[str],
    outputs: dict[str, list[int]],
) -> None:
    http_meta = http_client.get_model_metadata(model)
    grpc_meta = json_format.MessageToDict(grpc_client.get_model_metadata(model), preserving_proto_field_name=True)
    for meta in (http_meta, grpc_meta):
        assert [i["name"] for i in meta["inputs"]] == inputs
        assert all(i["datatype"] == "BYTES" and [int(d) for d in i["shape"]] == [-1, 1] for i in meta["inputs"])
        assert {o["name"]: [int(d) for d in o["shape"]] for o in meta["outputs"]} == outputs
        assert meta["versions"] == ["1"]

    http_config = http_client.get_model_config(model)
    grpc_config = grpc_client.get_model_config(model).config
    assert http_config["max_batch_size"] == grpc_config.max_batch_size > 0
    assert "dynamic_batching" in http_config and grpc_config.HasField("dynamic_batching")
    # The CPU server cuts model batches of at most 8 rows when --max-batch-size is unset.
    assert http_config["dynamic_batching"]["preferred_batch_size"] == [8]
    assert list(grpc_config.dynamic_batching.preferred_batch_size) == [8]
    for entry in http_config["input"]:
        assert entry["data_type"] == "TYPE_STRING" and entry["dims"] == [1]
        assert entry["optional"] == (entry["name"] == "TEXT_PAIR")
    assert [(i.name, list(i.dims), i.optional) for i in grpc_config.input] == [
        (e["name"], e["dims"], e["optional"]) for e in http_config["input"]
    ]
    assert {o.name for o in grpc_config.output} == set(outputs)


def test_model_config_names_a_classifiers_problem_type(
    server: ServerProcess, grpc_client: tgrpc.InferenceServerClient
) -> None:
    # What /v1/models says of the head, which a gRPC-only client (electra-eval --grpc) cannot ask.
    described = {m["name"]: m for m in httpx.get(f"{server.url}/v1/models", timeout=10).json()["models"]}
    assert described["multilabel"]["problem_type"] == "multi_label_classification"
    parameters = grpc_client.get_model_config("multilabel").config.parameters
    assert parameters["problem_type"].string_value == "multi_label_classification"


def test_statistics_count_inferences(
    grpc_client: tgrpc.InferenceServerClient, http_client: thttp.InferenceServerClient
) -> None:
    def stats() -> Any:
        (model_stats,) = grpc_client.get_inference_statistics("tag5").model_stats
        return model_stats

    before = stats()
    grpc_client.infer("tag5", tensors(tgrpc, {"TEXT": TEXTS[:3]}))
    http_client.infer("tag5", tensors(thttp, {"TEXT": TEXTS[:2]}))
    after = stats()
    assert after.inference_stats.success.count == before.inference_stats.success.count + 2
    assert after.inference_count == before.inference_count + 5
    assert after.execution_count > before.execution_count
    assert after.inference_stats.compute_infer.ns > before.inference_stats.compute_infer.ns
    assert after.last_inference >= before.last_inference and after.last_inference > 0

    over_http = http_client.get_inference_statistics("tag5")["model_stats"][0]
    assert over_http["inference_stats"]["success"]["count"] == after.inference_stats.success.count
    everything = http_client.get_inference_statistics()["model_stats"]
    assert {"demo-classify", "tag5", "qa-short"} <= {s["name"] for s in everything}


def test_statistics_count_rest_requests_too(server: ServerProcess, grpc_client: tgrpc.InferenceServerClient) -> None:
    """Triton counts every inference of a model, whatever the protocol: so do /v1 and /models/{name}."""

    def stats() -> Any:
        (model_stats,) = grpc_client.get_inference_statistics("tag5").model_stats
        return model_stats

    before = stats()
    rest(server, "tag", "tag5", TEXTS[:3])
    assert httpx.post(f"{server.url}/models/tag5", json={"inputs": TEXTS[0]}, timeout=60).status_code == 200
    refused = httpx.post(f"{server.url}/v1/tag", json={"model": "tag5", "inputs": 42}, timeout=60)
    assert refused.status_code in (400, 422)
    after = stats()
    assert after.inference_stats.success.count == before.inference_stats.success.count + 2
    assert after.inference_count == before.inference_count + 4
    assert after.inference_stats.fail.count == before.inference_stats.fail.count + 1


# ---------------------------------------------------------------- errors on the wire


def grpc_status(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(InferenceServerException) as caught:
        call(*args, **kwargs)
    return caught.value.status()


def text_tensor(module: Any, name: str = "TEXT", datatype: str = "BYTES", shape: tuple[int, ...] = (1, 1)) -> Any:
    tensor = module.InferInput(name, list(shape), datatype)
    if datatype == "BYTES":
        tensor.set_data_from_numpy(np.array(["x"] * int(np.prod(shape)), dtype=np.object_).reshape(shape))
    else:
        tensor.set_data_from_numpy(np.zeros(shape, dtype=np.int32))
    return tensor


def test_status_codes(
    grpc_client: tgrpc.InferenceServerClient, http_client: thttp.InferenceServerClient, server: ServerProcess
) -> None:
    cases = [
        ("nope", text_tensor, {}, "StatusCode.NOT_FOUND", "404"),
        ("demo-tag", text_tensor, {"name": "WORDS"}, "StatusCode.INVALID_ARGUMENT", "400"),
        ("demo-tag", text_tensor, {"datatype": "INT32"}, "StatusCode.INVALID_ARGUMENT", "400"),
        ("demo-tag", text_tensor, {"shape": (1, 2)}, "StatusCode.INVALID_ARGUMENT", "400"),
        ("demo-qa", text_tensor, {}, "StatusCode.INVALID_ARGUMENT", "400"),  # qa needs QUESTION and CONTEXT
    ]
    for model, make, kwargs, grpc_code, http_code in cases:
        assert grpc_status(grpc_client.infer, model, [make(tgrpc, **kwargs)]) == grpc_code, (model, kwargs)
        assert grpc_status(http_client.infer, model, [make(thttp, **kwargs)]) == http_code, (model, kwargs)
    for call in (grpc_client.get_model_metadata, grpc_client.get_model_config, grpc_client.get_inference_statistics):
        assert grpc_status(call, "nope") == "StatusCode.NOT_FOUND"
    assert httpx.get(f"{server.url}/v2/models/nope/config").status_code == 404
    assert httpx.get(f"{server.url}/v2/models/nope/stats").status_code == 404
    unknown_output = [thttp.InferRequestedOutput("PROBS")]
    assert grpc_status(http_client.infer, "demo-tag", [text_tensor(thttp)], outputs=unknown_output) == "400"

    with grpc.insecure_channel(server.grpc_target) as channel:
        raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as caught:
            raw(b"\xff\xff\xff", timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # The same tensor as raw bytes that overrun their length prefix.
        request = kserve.ModelInferRequest(model_name="demo-tag")
        request.inputs.add(name="TEXT", datatype="BYTES", shape=[1, 1])
        request.raw_input_contents.append(b"\x09\x00\x00\x00abc")
        with pytest.raises(grpc.RpcError) as caught:
            raw(request.SerializeToString(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "overruns" in caught.value.details()


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def test_deadlines(
    grpc_client: tgrpc.InferenceServerClient, http_client: thttp.InferenceServerClient, server: ServerProcess
) -> None:
    long_input = tensors(tgrpc, {"QUESTION": ["Which experiment ran longest?"], "CONTEXT": [LONG_CONTEXT]})
    assert grpc_status(grpc_client.infer, "qa-short", long_input, client_timeout=0.02) == "StatusCode.DEADLINE_EXCEEDED"
    # Triton's `timeout` parameter (microseconds) becomes the batcher's deadline: 1 us has passed
    # before the rows are queued, so they are dropped unrun and the answer is 504.
    dropped = {"model": "qa-short", "reason": "deadline"}
    before = metric(server, "electra_dropped_total", **dropped)
    qa = tensors(thttp, {"QUESTION": ["Which experiment ran longest?"], "CONTEXT": [LONG_CONTEXT]})
    assert grpc_status(http_client.infer, "qa-short", qa, timeout=1) == "504"
    assert grpc_status(grpc_client.infer, "qa-short", long_input, timeout=1) == "StatusCode.DEADLINE_EXCEEDED"
    assert metric(server, "electra_dropped_total", **dropped) > before
    assert results(grpc_client.infer("qa-short", long_input, client_timeout=120))


def test_requests_are_counted_with_protocol_v2(
    grpc_client: tgrpc.InferenceServerClient, http_client: thttp.InferenceServerClient, server: ServerProcess
) -> None:
    ok = {"model": "disc-short", "task": "discriminate", "protocol": "v2"}
    # One code label on every protocol (the HTTP status): KServe over gRPC and over HTTP count alike.
    before = metric(server, "electra_requests_total", code="200", **ok)
    grpc_client.infer("disc-short", tensors(tgrpc, {"TEXT": ["counted"]}))
    http_client.infer("disc-short", tensors(thttp, {"TEXT": ["counted"]}))
    deadline = time.monotonic() + 5
    while metric(server, "electra_requests_total", code="200", **ok) < before + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(server, "electra_requests_total", code="200", **ok) == before + 2


def test_the_readmes_tritonclient_example_runs_as_written(server: ServerProcess) -> None:
    """The README's KServe snippet, verbatim but for the port, in a process of its own (as a user's
    client would be: it imports tritonclient and not the server's stubs)."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## KServe v2 and tritonclient", 1)[1].split("\n## ", 1)[0]
    (snippet,) = re.findall(r"```python\n(.*?)```", section, re.S)
    assert "localhost:8001" in snippet
    code = snippet.replace("localhost:8001", server.grpc_target)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert '"label":"POSITIVE"' in done.stdout and '"label":"NEGATIVE"' in done.stdout, done.stdout
