"""`electra.v1.ElectraService`: the typed gRPC API. Each RPC converts its request into the task's
typed items and the parameters it sets (`from_proto`), runs it through the service, and builds the
typed response from the list-shaped results; the stream does the same for each message,
concurrently, reporting failures per message."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message

from proto.electra.v1 import electra_pb2 as pb
from server.api.grpc.calls import decode, holding_body, inference_unary, request_id_of, status_code, stream
from server.core.errors import ErrorKind, ServeError, too_large
from server.core.service import Call, InferenceService, Result, TaskRequest
from server.core.tasks import classify, qa, rerank

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ElectraService"].full_name
PROTOCOL = "grpc"


def _optional(message: Message, *names: str) -> dict[str, Any]:
    """The proto3 `optional` fields that are set, by name (unset: the task's default)."""
    return {name: getattr(message, name) for name in names if message.HasField(name)}


# ---------------------------------------------------------------- requests -> typed items and parameters


def classify_items(request: pb.ClassifyRequest) -> list[Any]:
    return [
        classify.item(item.text, item.text_pair if item.HasField("text_pair") else None, f"inputs[{i}]")
        for i, item in enumerate(request.inputs)
    ]


def classify_parameters(request: pb.ClassifyRequest) -> dict[str, Any]:
    given = _optional(request.parameters, "top_k", "function_to_apply", "truncate")
    if given.get("top_k") == 0:
        given["top_k"] = None  # every label
    return given


def qa_items(request: pb.AnswerQuestionRequest) -> list[Any]:
    return [qa.item(item.question, item.context, f"inputs[{i}]") for i, item in enumerate(request.inputs)]


def qa_parameters(request: pb.AnswerQuestionRequest) -> dict[str, Any]:
    return _optional(request.parameters, *qa.PARAMETERS.names)


def text_items(request: pb.TagRequest | pb.DiscriminateRequest) -> list[Any]:
    return list(request.inputs)


def tag_parameters(request: pb.TagRequest) -> dict[str, Any]:
    given = _optional(request.parameters, "aggregation_strategy", "stride")
    if request.parameters.HasField("ignore_labels"):
        given["ignore_labels"] = list(request.parameters.ignore_labels.labels)
    return given


def discriminate_parameters(request: pb.DiscriminateRequest) -> dict[str, Any]:
    return _optional(request.parameters, "threshold")


def rerank_items(request: pb.RerankRequest) -> list[Any]:
    if len(request.documents) > rerank.MAX_DOCUMENTS:
        raise too_large(f"{len(request.documents)} documents; at most {rerank.MAX_DOCUMENTS} may be reranked at once")
    if not request.documents:
        raise ServeError(ErrorKind.INVALID_INPUT, "documents must not be empty")
    return [rerank.pair(request.query, d, f"documents[{i}]") for i, d in enumerate(request.documents)]


def rerank_parameters(request: pb.RerankRequest) -> dict[str, Any]:
    given = _optional(request.parameters, "aggregation", "stride", "max_tokens_per_doc", "truncation_direction")
    if request.parameters.HasField("truncate"):
        given["truncate"] = "cut" if request.parameters.truncate else "windows"
    if "truncation_direction" in given:
        given["truncation_direction"] = given["truncation_direction"].lower()
    return given


# ---------------------------------------------------------------- list-shaped results -> responses


def classify_response(model: str, values: list[Any], request: Any = None) -> pb.ClassifyResponse:
    return pb.ClassifyResponse(
        model=model,
        results=[pb.ClassifyResult(labels=[pb.LabelScore(**entry) for entry in ranked]) for ranked in values],
    )


def qa_response(model: str, values: list[Any], request: Any = None) -> pb.AnswerQuestionResponse:
    return pb.AnswerQuestionResponse(
        model=model, results=[pb.QaResult(answers=[pb.Answer(**a) for a in answers]) for answers in values]
    )


def _entity(entity: dict[str, Any]) -> pb.Entity:
    return pb.Entity(
        label=entity["entity_group"] if "entity_group" in entity else entity["entity"],
        score=entity["score"],
        word=entity["word"],
        start=entity["start"],
        end=entity["end"],
        index=entity.get("index"),
    )


def tag_response(model: str, values: list[Any], request: Any = None) -> pb.TagResponse:
    return pb.TagResponse(model=model, results=[pb.TagResult(entities=[_entity(e) for e in v]) for v in values])


def discriminate_response(model: str, values: list[Any], request: Any = None) -> pb.DiscriminateResponse:
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


def rerank_response(model: str, values: list[Any], request: pb.RerankRequest) -> pb.RerankResponse:
    top_n = request.top_n if request.HasField("top_n") and request.top_n > 0 else None
    return pb.RerankResponse(
        model=model,
        results=[
            pb.RankedDocument(index=i, score=v["score"], raw_score=v["raw_score"], windows=v["windows"])
            for i, v in rerank.ranked(values, top_n)
        ],
    )


@dataclass(frozen=True, slots=True)
class TypedTask:
    task: str  # the service's task name
    method: str  # the RPC
    field: str  # its name in StreamRequest / StreamResponse
    request_type: type[Message]
    items: Callable[[Any], list[Any]]
    parameters: Callable[[Any], dict[str, Any]]
    response: Callable[[str, list[Any], Any], Message]  # (model, results, the request)
    size: Callable[[Any], int] = lambda request: len(request.inputs)


TASKS = (
    TypedTask("classify", "Classify", "classify", pb.ClassifyRequest, classify_items, classify_parameters,
              classify_response),
    TypedTask("qa", "AnswerQuestion", "answer_question", pb.AnswerQuestionRequest, qa_items, qa_parameters,
              qa_response),
    TypedTask("tag", "Tag", "tag", pb.TagRequest, text_items, tag_parameters, tag_response),
    TypedTask("discriminate", "Discriminate", "discriminate", pb.DiscriminateRequest, text_items,
              discriminate_parameters, discriminate_response),
    TypedTask("rerank", "Rerank", "rerank", pb.RerankRequest, rerank_items, rerank_parameters, rerank_response,
              size=lambda request: len(request.documents)),
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

    async def run(self, spec: TypedTask, request: Any, call: Call) -> tuple[Message, Result]:
        self.service.check_size(spec.size(request))  # before any item is built
        work = TaskRequest(
            spec.task,
            request.model or None,
            version=request.model_version or None,
            items=spec.items(request),
            given=spec.parameters(request),
        )
        result = await self.service.infer(call, work)
        response = spec.response(result.model, result.values, request)
        response.model_version = result.version  # type: ignore[attr-defined]
        return response, result

    def unary(self, spec: TypedTask) -> grpc.RpcMethodHandler:
        async def behaviour(raw: bytes, context: grpc.aio.ServicerContext, call: Call) -> Message:
            call.task = spec.task
            response, _ = await self.run(spec, decode(spec.request_type, raw), call)
            return response

        return inference_unary(self.service, PROTOCOL, behaviour)

    async def stream_one(self, raw: bytes, context: grpc.aio.ServicerContext) -> pb.StreamResponse:
        """One stream message -> its response; every failure is reported in `status`."""
        request_id = ""
        try:
            with self.service.track(PROTOCOL, request_id_of(context)) as call, holding_body(self.service, raw):
                call.deadline = self.service.deadline_in(context.time_remaining())
                message = decode(pb.StreamRequest, raw)
                request_id = message.id
                which = message.WhichOneof("request")
                if which is None:
                    raise ServeError(ErrorKind.BAD_REQUEST, "stream request sets none of " + ", ".join(BY_FIELD))
                spec = BY_FIELD[which]
                call.task = spec.task
                response, result = await self.run(spec, getattr(message, which), call)
                return pb.StreamResponse(  # the oneof's field is chosen at run time, which the stub cannot follow
                    id=request_id,
                    status=pb.Status(code=0),
                    timings=_timings(result),
                    **{which: response},  # type: ignore[arg-type]
                )
        except ServeError as failure:
            code = status_code(failure.kind).value[0]
            status = pb.Status(code=code, message=failure.message)
            if failure.retry_after_s is not None:
                status.retry_after_s = failure.retry_after_s
            return pb.StreamResponse(id=request_id, status=status)

    def handlers(self) -> grpc.GenericRpcHandler:
        methods = {spec.method: self.unary(spec) for spec in TASKS}
        methods["Stream"] = stream(self.stream_one)
        return grpc.method_handlers_generic_handler(SERVICE_NAME, methods)
