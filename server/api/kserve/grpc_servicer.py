"""`inference.GRPCInferenceService`: KServe v2 over gRPC with Triton's extensions, so that
`tritonclient.grpc` and `perf_analyzer -i grpc` work unchanged. Each RPC translates to the v2
data plane (shared with /v2 HTTP) and back."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from proto.inference import grpc_service_pb2 as pb
from server.api.grpc.calls import decode, holding_body, inference_unary, request_id_of, stream, unary
from server.api.kserve import tensors as t
from server.api.kserve.dataplane import PROTOCOL, InferOutcome, V2Dataplane, shorter_timeout
from server.api.repository import RepositoryControl
from server.core.errors import ErrorKind, ServeError
from server.core.service import Call, InferenceService

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


def input_tensors(request: pb.ModelInferRequest, max_rows: int | None = None) -> list[t.InputTensor]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise t.bad(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs: give one per input or none")
    tensors = []
    for i, tensor in enumerate(request.inputs):
        name, datatype, shape = tensor.name, tensor.datatype, list(tensor.shape)
        if raw:
            if tensor.HasField("contents"):
                raise t.bad(f"input '{name}' has contents while the request uses raw_input_contents")
            tensors.append(t.from_raw(name, datatype, shape, raw[i], max_rows))
            continue
        field = CONTENTS_FIELD.get(datatype)
        if field is None:
            if datatype in t.DTYPES:
                raise t.bad(f"input '{name}': {datatype} data must be sent in raw_input_contents")
            t.from_elements(name, datatype, shape, [])  # raises the unknown-datatype error
            continue
        t.element_count(shape, name, max_rows)  # the declared size first, before the elements are copied
        tensors.append(t.from_elements(name, datatype, shape, list(getattr(tensor.contents, field)), max_rows))
    return tensors


def output_names(request: pb.ModelInferRequest) -> list[str] | None:
    for output in request.outputs:
        if "classification" in output.parameters:
            raise t.bad(f"output '{output.name}': the classification extension is not supported; read RESULT")
    return [output.name for output in request.outputs] or None


def timeout_s(request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> float | None:
    """The shorter of the client's gRPC deadline and Triton's `timeout` parameter (microseconds)."""
    triton_us = None
    if "timeout" in request.parameters:
        parameter = request.parameters["timeout"]
        choice = parameter.WhichOneof("parameter_choice")
        triton_us = getattr(parameter, choice) if choice in ("int64_param", "uint64_param") else -1
    return shorter_timeout(context.time_remaining(), triton_us)


def infer_response(request: pb.ModelInferRequest, outcome: InferOutcome) -> pb.ModelInferResponse:
    # Outputs always travel raw, as Triton sends them (tritonclient reads either form).
    return pb.ModelInferResponse(
        model_name=outcome.model,
        model_version=outcome.version,
        id=request.id,
        outputs=[
            pb.ModelInferResponse.InferOutputTensor(name=o.name, datatype=o.datatype, shape=o.shape)
            for o in outcome.outputs
        ],
        raw_output_contents=[o.raw() for o in outcome.outputs],
    )


class InferenceServicer:
    def __init__(self, service: InferenceService, control: RepositoryControl | None = None) -> None:
        self.service = service
        self.plane = V2Dataplane(service)
        self.control = control

    async def _infer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext, call: Call
    ) -> InferOutcome:
        call.deadline = self.service.deadline_in(timeout_s(request, context))
        tensors = input_tensors(request, self.service.config.max_inputs_per_request)
        return await self.plane.infer(call, request.model_name, request.model_version, tensors, output_names(request))

    async def model_infer(self, raw: bytes, context: grpc.aio.ServicerContext, call: Call) -> Message:
        request = decode(pb.ModelInferRequest, raw)
        return infer_response(request, await self._infer(request, context, call))

    async def stream_one(self, raw: bytes, context: grpc.aio.ServicerContext) -> pb.ModelStreamInferResponse:
        """One streamed request -> its response; a failure is reported in `error_message`."""
        request = pb.ModelInferRequest()
        try:
            with self.service.track(PROTOCOL, request_id_of(context)) as call, holding_body(self.service, raw):
                request = decode(pb.ModelInferRequest, raw)
                outcome = await self._infer(request, context, call)
                return pb.ModelStreamInferResponse(infer_response=infer_response(request, outcome))
        except ServeError as failure:
            # The id lets a client match the failure to its request.
            echo = pb.ModelInferResponse(
                model_name=request.model_name, model_version=request.model_version, id=request.id
            )
            return pb.ModelStreamInferResponse(error_message=failure.message, infer_response=echo)

    # -- health and metadata ----------------------------------------------------------------

    async def server_live(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        decode(pb.ServerLiveRequest, raw)
        return pb.ServerLiveResponse(live=self.service.live)

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
        statistics = await self.plane.statistics(request.name, request.version)
        return json_format.ParseDict(statistics, pb.ModelStatisticsResponse())

    async def repository_index(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        request = decode(pb.RepositoryIndexRequest, raw)
        index = await self.plane.repository_index(request.ready)
        return json_format.ParseDict({"models": index}, pb.RepositoryIndexResponse())

    async def repository_model_load(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        request = decode(pb.RepositoryModelLoadRequest, raw)
        await self._control().load(request.model_name, dict(request.parameters))
        return pb.RepositoryModelLoadResponse()

    async def repository_model_unload(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        request = decode(pb.RepositoryModelUnloadRequest, raw)
        await self._control().unload(request.model_name, dict(request.parameters))
        return pb.RepositoryModelUnloadResponse()

    def _control(self) -> RepositoryControl:
        if self.control is None:
            raise ServeError(ErrorKind.BAD_REQUEST, "this server does not load or unload models at run time")
        return self.control

    def handlers(self) -> grpc.GenericRpcHandler:
        unary_methods: dict[str, Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Message]]] = {
            "ServerLive": self.server_live,
            "ServerReady": self.server_ready,
            "ModelReady": self.model_ready,
            "ServerMetadata": self.server_metadata,
            "ModelMetadata": self.model_metadata,
            "ModelConfig": self.model_config,
            "ModelStatistics": self.model_statistics,
            "RepositoryIndex": self.repository_index,
            "RepositoryModelLoad": self.repository_model_load,
            "RepositoryModelUnload": self.repository_model_unload,
        }
        methods = {name: unary(behaviour) for name, behaviour in unary_methods.items()}
        methods["ModelInfer"] = inference_unary(self.service, PROTOCOL, self.model_infer)
        methods["ModelStreamInfer"] = stream(self.stream_one)
        return grpc.method_handlers_generic_handler(SERVICE_NAME, methods)
