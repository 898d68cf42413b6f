"""Every gRPC API of the server, registered on the grpc.aio server that grpc_server creates:
the typed `electra.v1.ElectraService` and KServe v2's `inference.GRPCInferenceService`."""

from __future__ import annotations

import grpc

from server.api.grpc_typed import SERVICE_NAME as TYPED_SERVICE
from server.api.grpc_typed import ElectraServicer
from server.api.v2_grpc import SERVICE_NAME as KSERVE_SERVICE
from server.api.v2_grpc import InferenceServicer
from server.core.service import InferenceService
from server.settings import Settings


def register(server: grpc.aio.Server, service: InferenceService, settings: Settings) -> list[str]:
    """Add the servicers; returns their full names (for reflection)."""
    server.add_generic_rpc_handlers((ElectraServicer(service).handlers(), InferenceServicer(service).handlers()))
    return [TYPED_SERVICE, KSERVE_SERVICE]
