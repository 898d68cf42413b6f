"""`inference.GRPCInferenceService`: KServe v2 over gRPC with Triton's extensions, so that
`tritonclient.grpc` and `perf_analyzer -i grpc` work unchanged. Each RPC translates to the v2
data plane (shared with /v2 HTTP) and back."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from proto.inference import grpc_service_pb2 as pb
from server.api import v2_tensors as t
from server.api.grpc_common import (
    Call,
    counted,
    deadline_of,
    decode,
    internal,
    model_label,
    stream,
    timing_metadata,
    unary,
)
from server.api.v2_dataplane import MODEL_VERSION, PROTOCOL, InferOutcome, V2Dataplane
from server.core.errors import ServeError
from server.core.service import InferenceService

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name

# Where InferTensorContents keeps each datatype's elements (FP16 and BF16 only travel raw).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def input_tensors(request: pb.ModelInferRequest) -> list[t.InputTensor]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise t.bad(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs: give one per input or none")
    tensors = []
    for i, tensor in enumerate(request.inputs):
        name, datatype, shape = tensor.name, tensor.datatype, list(tensor.shape)
        if raw:
            if tensor.HasField("contents"):
                raise t.bad(f"input '{name}' has contents while the request uses raw_input_contents")
            tensors.append(t.from_raw(name, datatype, shape, raw[i]))
            continue
        field = CONTENTS_FIELD.get(datatype)
        if field is None:
            if datatype in t.DTYPES:
                raise t.bad(f"input '{name}': {datatype} data must be sent in raw_input_contents")
            t.from_elements(name, datatype, shape, [])  # raises the unknown-datatype error
        tensors.append(t.from_elements(name, datatype, shape, list(getattr(tensor.contents, field))))
    return tensors


def output_names(request: pb.ModelInferRequest) -> list[str] | None:
    for output in request.outputs:
        if "classification" in output.parameters:
            raise t.bad(f"output '{output.name}': the classification extension is not supported; read RESULT")
    return [output.name for output in request.outputs] or None


def request_deadline(request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> float | None:
    """The earlier of the client's gRPC deadline and Triton's `timeout` parameter (microseconds)."""
    deadline = deadline_of(context)
    if "timeout" not in request.parameters:
        return deadline
    parameter = request.parameters["timeout"]
    choice = parameter.WhichOneof("parameter_choice")
    timeout_us = getattr(parameter, choice) if choice in ("int64_param", "uint64_param") else None
    if not timeout_us or timeout_us <= 0:
        raise t.bad("parameter timeout must be a positive int64 number of microseconds")
    mine = time.monotonic() + timeout_us / 1_000_000
    return mine if deadline is None else min(deadline, mine)


def infer_response(request: pb.ModelInferRequest, outcome: InferOutcome) -> pb.ModelInferResponse:
    # Outputs always travel raw, as Triton sends them (tritonclient reads either form).
    return pb.ModelInferResponse(
        model_name=outcome.model.name,
        model_version=MODEL_VERSION,
        id=request.id,
        outputs=[
            pb.ModelInferResponse.InferOutputTensor(name=o.name, datatype=o.datatype, shape=o.shape)
            for o in outcome.outputs
        ],
        raw_output_contents=[o.raw() for o in outcome.outputs],
    )


class InferenceServicer:
    def __init__(self, service: InferenceService) -> None:
        self.service = service
        self.plane = V2Dataplane(service)

    async def _infer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext, call: Call
    ) -> InferOutcome:
        call.model, call.task = model_label(self.service, request.model_name)
        return await self.plane.infer(
            request.model_name,
            request.model_version,
            input_tensors(request),
            output_names(request),
            request_deadline(request, context),
        )

    async def model_infer(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        with counted(self.service, PROTOCOL, Call(), context) as call:
            request = decode(pb.ModelInferRequest, raw)
            outcome = await self._infer(request, context, call)
            context.set_trailing_metadata(timing_metadata(outcome.timings, outcome.model.name))
            return infer_response(request, outcome)

    async def stream_one(self, raw: bytes, context: grpc.aio.ServicerContext) -> pb.ModelStreamInferResponse:
        """One streamed request -> its response; a failure is reported in `error_message`."""
        request = pb.ModelInferRequest()
        try:
            with counted(self.service, PROTOCOL, Call(), context) as call:
                request = decode(pb.ModelInferRequest, raw)
                outcome = await self._infer(request, context, call)
                return pb.ModelStreamInferResponse(infer_response=infer_response(request, outcome))
        except ServeError as error:
            failure = error
        except Exception as exc:  # CancelledError is no Exception: cancellation propagates
            failure = internal(exc)
        # The id lets a client match the failure to its request.
        echo = pb.ModelInferResponse(model_name=request.model_name, model_version=request.model_version, id=request.id)
        return pb.ModelStreamInferResponse(error_message=failure.message, infer_response=echo)

    # -- health and metadata ----------------------------------------------------------------

    async def server_live(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        decode(pb.ServerLiveRequest, raw)
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        decode(pb.ServerReadyRequest, raw)
        return pb.ServerReadyResponse(ready=self.service.ready)

    async def model_ready(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        request = decode(pb.ModelReadyRequest, raw)
        return pb.ModelReadyResponse(ready=self.plane.model_ready(request.name, request.version))

    async def server_metadata(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        decode(pb.ServerMetadataRequest, raw)
        return json_format.ParseDict(self.plane.server_metadata(), pb.ServerMetadataResponse())

    async def model_metadata(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        request = decode(pb.ModelMetadataRequest, raw)
        metadata = self.plane.model_metadata(request.name, request.version)
        return json_format.ParseDict(metadata, pb.ModelMetadataResponse())

    async def model_config(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        request = decode(pb.ModelConfigRequest, raw)
        config = self.plane.model_config(request.name, request.version)
        return json_format.ParseDict({"config": config}, pb.ModelConfigResponse())

    async def model_statistics(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        request = decode(pb.ModelStatisticsRequest, raw)
        statistics = self.plane.statistics(request.name, request.version)
        return json_format.ParseDict(statistics, pb.ModelStatisticsResponse())

    async def repository_index(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        request = decode(pb.RepositoryIndexRequest, raw)
        index = self.plane.repository_index(request.ready)
        return json_format.ParseDict({"models": index}, pb.RepositoryIndexResponse())

    def handlers(self) -> grpc.GenericRpcHandler:
        unary_methods: dict[str, Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Message]]] = {
            "ServerLive": self.server_live,
            "ServerReady": self.server_ready,
            "ModelReady": self.model_ready,
            "ServerMetadata": self.server_metadata,
            "ModelMetadata": self.model_metadata,
            "ModelInfer": self.model_infer,
            "ModelConfig": self.model_config,
            "ModelStatistics": self.model_statistics,
            "RepositoryIndex": self.repository_index,
        }
        methods = {name: unary(behaviour) for name, behaviour in unary_methods.items()}
        methods["ModelStreamInfer"] = stream(self.stream_one)
        return grpc.method_handlers_generic_handler(SERVICE_NAME, methods)
