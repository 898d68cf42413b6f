"""electra-eval's gRPC backend without a server: the typed request carries exactly the parameters the
REST backend sends (as the server's own proto mapping reads them back), and the responses come back
in REST's shapes."""

from __future__ import annotations

import pytest

from evaluation.backends import BackendError, grpc_answers, grpc_request
from evaluation.data import qa_parameters
from server.api.grpc import typed as grpc_typed


@pytest.mark.parametrize("function", ["softmax", "sigmoid", "none"])
def test_classify_parameters_and_inputs(function):
    parameters = {"top_k": None, "function_to_apply": function}
    request = grpc_request(
        "classify", "m", ["one", {"text": "a", "text_pair": "b"}, {"text": "c", "text_pair": None}], parameters
    )
    assert request.model == "m" and request.parameters.top_k == 0
    assert grpc_typed.classify_parameters(request) == parameters
    assert [(i.text, i.text_pair if i.HasField("text_pair") else None) for i in request.inputs] == [
        ("one", None), ("a", "b"), ("c", None)
    ]  # fmt: skip


def test_qa_and_tag_parameters_round_trip():
    parameters = qa_parameters(512, True, 30)
    request = grpc_request("qa", "m", [{"question": "q", "context": "c"}], parameters)
    assert grpc_typed.qa_parameters(request) == parameters
    tagged = {"aggregation_strategy": "none", "ignore_labels": []}
    request = grpc_request("tag", "m", ["a b"], tagged)
    assert request.parameters.HasField("ignore_labels")  # an empty list keeps every label; unset would drop "O"
    assert grpc_typed.tag_parameters(request) == tagged and list(request.inputs) == ["a b"]


def test_unknown_parameter_is_refused():
    with pytest.raises(BackendError, match="no parameter 'nope'"):
        grpc_request("tag", "m", ["a"], {"nope": 1})


def test_responses_in_rest_shapes():
    classify = grpc_typed.classify_response(
        "m", [[{"label": "POSITIVE", "score": 0.75}, {"label": "NEGATIVE", "score": 0.25}]]
    )
    assert grpc_answers("classify", classify, {}) == [
        [{"label": "POSITIVE", "score": 0.75}, {"label": "NEGATIVE", "score": 0.25}]
    ]
    one = {"score": 0.5, "start": 0, "end": 3, "answer": "abc"}
    qa = grpc_typed.qa_response("m", [[one], [one, {**one, "start": 4}], []])
    assert grpc_answers("qa", qa, {}) == [one, [one, {**one, "start": 4}], []]  # one answer: the object, as REST
    token = {"entity": "B-PER", "score": 0.9, "index": 1, "word": "ann", "start": 0, "end": 3}
    tag = grpc_typed.tag_response("m", [[token], []])
    assert grpc_answers("tag", tag, {"aggregation_strategy": "none"}) == [[token], []]
    group = {"entity_group": "PER", "score": 0.9, "word": "ann", "start": 0, "end": 3}
    assert grpc_answers("tag", grpc_typed.tag_response("m", [[group]]), {}) == [[group]]
