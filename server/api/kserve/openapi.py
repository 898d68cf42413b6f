"""KServe v2's part of the OpenAPI document (see `server.api.http.openapi_responses`): Triton's
JSON for the /v2 routes, their inline request schemas, and the binary tensor data extension."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, RootModel

from server.api.http.openapi_responses import INFERENCE_ERRORS, TIMEOUT_PARAMETER, TIMING_DOC, errors

# ---------------------------------------------------------------- KServe v2 / Triton


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ModelConfig(BaseModel):
    """A minimal Triton model configuration (what tritonclient and perf_analyzer read)."""

    name: str
    platform: str
    backend: str
    version_policy: dict[str, Any]
    max_batch_size: int
    input: list[dict[str, Any]]
    output: list[dict[str, Any]]
    dynamic_batching: dict[str, Any]
    instance_group: list[dict[str, Any]]
    default_model_filename: str
    parameters: dict[str, dict[str, str]]


class Duration(BaseModel):
    count: int
    ns: int


class ModelStat(BaseModel):
    name: str
    version: str
    last_inference: int
    inference_count: int
    execution_count: int
    inference_stats: dict[str, Duration]
    batch_stats: list[dict[str, Any]]
    memory_usage: list[Any]


class ModelStats(BaseModel):
    model_stats: list[ModelStat]


class IndexEntry(BaseModel):
    name: str
    version: str
    state: str
    reason: str


class RepositoryIndex(RootModel[list[IndexEntry]]):
    """Every model of the repository and every version the server knows."""


class Empty(BaseModel):
    """`{}`"""


class OutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any] = Field(None, description="JSON tensor data (row-major)")  # type: ignore[arg-type]
    parameters: dict[str, Any] = Field(
        None,  # type: ignore[arg-type]
        description="binary_data_size: the tensor's bytes follow the JSON header",
    )


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str = Field(None, description="the request's id, when it set one")  # type: ignore[assignment]
    outputs: list[OutputTensor]


INFER_HEADERS = {
    **TIMING_DOC,
    "Inference-Header-Content-Length": {
        "description": "with binary outputs (application/octet-stream): bytes of the JSON header; "
        "the outputs' raw data follow it",
        "schema": {"type": "string"},
    },
}


def infer_responses() -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "model": InferenceResponse,
            "description": "The outputs: JSON, or with the binary tensor data extension "
            "(binary_data_output, an output's binary_data) a JSON header followed by raw tensor data",
            "headers": INFER_HEADERS,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        **errors(*INFERENCE_ERRORS),
    }


# ---------------------------------------------------------------- KServe request bodies (inline schemas)

_PARAMETERS = {"type": "object", "description": "Triton parameters", "additionalProperties": True}

INFER_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "InferenceRequest",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {
            "type": "object",
            "properties": {
                "binary_data_output": {"type": "boolean"},
                "timeout": {"type": "integer", "minimum": 1, "description": "microseconds"},
            },
        },
        "inputs": {
            "type": "array",
            "minItems": 1,
            "maxItems": 8,
            "items": {
                "type": "object",
                "required": ["name", "datatype", "shape"],
                "properties": {
                    "name": {"type": "string", "description": "TEXT, TEXT_PAIR, QUESTION or CONTEXT"},
                    "datatype": {"type": "string", "description": "BYTES"},
                    "shape": {"type": "array", "items": {"type": "integer"}, "description": "[N] or [N, 1]"},
                    "data": {"type": "array", "description": "one string per row"},
                    "parameters": {
                        "type": "object",
                        "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
                    },
                },
            },
        },
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "description": "RESULT or LOGITS"},
                    "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}},
                },
            },
        },
    },
}


def _bytes(name: str, *texts: str) -> dict[str, Any]:
    return {"name": name, "datatype": "BYTES", "shape": [len(texts), 1], "data": list(texts)}


INFER_EXAMPLES: dict[str, dict[str, Any]] = {
    "text": {
        "summary": "classify, tag or discriminate: TEXT (classify also takes TEXT_PAIR)",
        "value": {"inputs": [_bytes("TEXT", "A delightful, well-paced film.", "Ada Lovelace lived in London.")]},
    },
    "qa": {
        "summary": "qa: QUESTION and CONTEXT",
        "value": {
            "inputs": [
                _bytes("QUESTION", "Who proposed ELECTRA?"),
                _bytes("CONTEXT", "ELECTRA was proposed by Clark et al."),
            ]
        },
    },
    "binary output": {
        "summary": "outputs as raw tensor data after the JSON header (binary tensor data extension)",
        "value": {"inputs": [_bytes("TEXT", "Great!")], "parameters": {"binary_data_output": True}},
    },
}


def infer_openapi_extra() -> dict[str, Any]:
    return {
        "parameters": [
            TIMEOUT_PARAMETER,
            {
                "name": "Inference-Header-Content-Length",
                "in": "header",
                "required": False,
                "description": "binary tensor data extension: bytes of the JSON header that starts the body",
                "schema": {"type": "integer", "minimum": 0},
            },
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": INFER_REQUEST_SCHEMA, "examples": INFER_EXAMPLES},
                "application/octet-stream": {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "description": "a JSON header of Inference-Header-Content-Length bytes, then the "
                        "raw data of each input whose parameters.binary_data_size is set, in input order",
                    }
                },
            },
        },
    }


def json_body(schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"requestBody": {"required": required, "content": {"application/json": {"schema": schema}}}}


INDEX_REQUEST_SCHEMA = {
    "type": "object",
    "title": "RepositoryIndexRequest",
    "properties": {"ready": {"type": "boolean", "description": "only the models that are ready"}},
}
LOAD_REQUEST_SCHEMA = {
    "type": "object",
    "title": "RepositoryModelRequest",
    "properties": {
        "parameters": {
            **_PARAMETERS,
            "description": "none is supported (unload: unload_dependents is accepted and ignored)",
        }
    },
}
