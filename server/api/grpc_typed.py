"""`electra.v1.ElectraService`: the typed gRPC API. Each RPC translates its request into the REST
task's `inputs` and `parameters`, calls `service.run`, and translates the result back; the
stream does the same for each message, concurrently, reporting failures per message."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message

from proto.electra.v1 import electra_pb2 as pb
from server.api.grpc_common import Call, counted, deadline_of, decode, internal, status_code, stream, timing_metadata
from server.api.grpc_common import unary as unary_handler
from server.api.model_stats import stats_of
from server.core.errors import ErrorKind, ServeError
from server.core.service import InferenceService, Result

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ElectraService"].full_name
PROTOCOL = "grpc"


def _optional(message: Message, *names: str) -> dict[str, Any]:
    """The proto3 `optional` fields that are set, by name (unset: the REST default)."""
    return {name: getattr(message, name) for name in names if message.HasField(name)}


# ---------------------------------------------------------------- requests -> REST inputs/parameters


def classify_inputs(request: pb.ClassifyRequest) -> list[Any]:
    return [
        {"text": item.text, "text_pair": item.text_pair if item.HasField("text_pair") else None}
        for item in request.inputs
    ]


def classify_parameters(request: pb.ClassifyRequest) -> dict[str, Any]:
    given = _optional(request.parameters, "top_k", "function_to_apply", "truncate")
    if given.get("top_k") == 0:
        given["top_k"] = None  # every label
    return given


def qa_inputs(request: pb.AnswerQuestionRequest) -> list[Any]:
    return [{"question": item.question, "context": item.context} for item in request.inputs]


def qa_parameters(request: pb.AnswerQuestionRequest) -> dict[str, Any]:
    return _optional(
        request.parameters,
        "top_k",
        "doc_stride",
        "max_answer_len",
        "max_seq_len",
        "max_question_len",
        "handle_impossible_answer",
        "align_to_words",
        "null_score_diff_threshold",
    )


def text_inputs(request: pb.TagRequest | pb.DiscriminateRequest) -> list[Any]:
    return list(request.inputs)


def tag_parameters(request: pb.TagRequest) -> dict[str, Any]:
    given = _optional(request.parameters, "aggregation_strategy", "stride")
    if request.parameters.HasField("ignore_labels"):
        given["ignore_labels"] = list(request.parameters.ignore_labels.labels)
    return given


def discriminate_parameters(request: pb.DiscriminateRequest) -> dict[str, Any]:
    return _optional(request.parameters, "threshold")


# ---------------------------------------------------------------- REST results -> responses


def classify_response(model: str, values: list[Any]) -> pb.ClassifyResponse:
    return pb.ClassifyResponse(
        model=model,
        results=[pb.ClassifyResult(labels=[pb.LabelScore(**entry) for entry in ranked]) for ranked in values],
    )


def qa_response(model: str, values: list[Any]) -> pb.AnswerQuestionResponse:
    # REST gives one object when exactly one answer remains, else a list.
    def answers(value: Any) -> list[pb.Answer]:
        return [pb.Answer(**a) for a in (value if isinstance(value, list) else [value])]

    return pb.AnswerQuestionResponse(model=model, results=[pb.QaResult(answers=answers(v)) for v in values])


def _entity(entity: dict[str, Any]) -> pb.Entity:
    return pb.Entity(
        label=entity["entity_group"] if "entity_group" in entity else entity["entity"],
        score=entity["score"],
        word=entity["word"],
        start=entity["start"],
        end=entity["end"],
        index=entity.get("index"),
    )


def tag_response(model: str, values: list[Any]) -> pb.TagResponse:
    return pb.TagResponse(model=model, results=[pb.TagResult(entities=[_entity(e) for e in v]) for v in values])


def discriminate_response(model: str, values: list[Any]) -> pb.DiscriminateResponse:
    return pb.DiscriminateResponse(
        model=model,
        results=[
            pb.DiscriminateResult(
                tokens=[pb.TokenScore(**token) for token in v["tokens"]],
                words=[pb.TokenScore(**word) for word in v["words"]],
                replaced_rate=v["replaced_rate"],
            )
            for v in values
        ],
    )


@dataclass(frozen=True, slots=True)
class TypedTask:
    task: str  # the service's task name
    method: str  # the RPC
    field: str  # its name in StreamRequest / StreamResponse
    request_type: type[Message]
    inputs: Callable[[Any], list[Any]]
    parameters: Callable[[Any], dict[str, Any]]
    response: Callable[[str, list[Any]], Message]


TASKS = (
    TypedTask("classify", "Classify", "classify", pb.ClassifyRequest, classify_inputs, classify_parameters,
              classify_response),
    TypedTask("qa", "AnswerQuestion", "answer_question", pb.AnswerQuestionRequest, qa_inputs, qa_parameters,
              qa_response),
    TypedTask("tag", "Tag", "tag", pb.TagRequest, text_inputs, tag_parameters, tag_response),
    TypedTask("discriminate", "Discriminate", "discriminate", pb.DiscriminateRequest, text_inputs,
              discriminate_parameters, discriminate_response),
)  # fmt: skip
BY_FIELD = {t.field: t for t in TASKS}


def _timings(result: Result) -> pb.Timings:
    t = result.timings
    return pb.Timings(
        total_ms=t.total_s * 1000,
        tokenization_ms=t.tokenization_s * 1000,
        queue_ms=t.queue_s * 1000,
        inference_ms=t.inference_s * 1000,
    )


class ElectraServicer:
    def __init__(self, service: InferenceService) -> None:
        self.service = service
        self.stats = stats_of(service)

    async def run(self, spec: TypedTask, request: Any, deadline: float | None, call: Call) -> tuple[Message, Result]:
        call.task = spec.task
        if request.model:
            call.model = request.model if request.model in self.service.models else "unknown"
        started = time.perf_counter()
        try:
            result = await self.service.run(
                spec.task, request.model or None, spec.inputs(request), spec.parameters(request), deadline
            )
        except ServeError as error:
            self.stats.record_failure(error.model or request.model, time.perf_counter() - started)
            raise
        call.model = result.model
        self.stats.record_success(result.model, len(request.inputs), result.timings)
        return spec.response(result.model, result.value), result

    def unary(self, spec: TypedTask) -> grpc.RpcMethodHandler:
        async def behaviour(raw: bytes, context: grpc.aio.ServicerContext) -> Message:
            with counted(self.service, PROTOCOL, Call(task=spec.task), context) as call:
                request = decode(spec.request_type, raw)
                response, result = await self.run(spec, request, deadline_of(context), call)
                context.set_trailing_metadata(timing_metadata(result.timings, result.model))
                return response

        return unary_handler(behaviour)

    async def stream_one(self, raw: bytes, context: grpc.aio.ServicerContext) -> pb.StreamResponse:
        """One stream message -> its response; every failure is reported in `status`."""
        request_id = ""
        try:
            with counted(self.service, PROTOCOL, Call(), context) as call:
                message = decode(pb.StreamRequest, raw)
                request_id = message.id
                which = message.WhichOneof("request")
                if which is None:
                    raise ServeError(ErrorKind.BAD_REQUEST, "stream request sets none of " + ", ".join(BY_FIELD))
                spec = BY_FIELD[which]
                response, result = await self.run(spec, getattr(message, which), deadline_of(context), call)
                return pb.StreamResponse(
                    id=request_id, status=pb.Status(code=0), timings=_timings(result), **{which: response}
                )
        except ServeError as error:
            failure = error
        except Exception as exc:  # CancelledError is no Exception: cancellation propagates
            failure = internal(exc)
        code = status_code(failure.kind).value[0]
        return pb.StreamResponse(id=request_id, status=pb.Status(code=code, message=failure.message))

    def handlers(self) -> grpc.GenericRpcHandler:
        methods = {spec.method: self.unary(spec) for spec in TASKS}
        methods["Stream"] = stream(self.stream_one)
        return grpc.method_handlers_generic_handler(SERVICE_NAME, methods)
