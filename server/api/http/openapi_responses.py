"""Response schemas for the OpenAPI document only: the routes answer with orjson-encoded
`Response`s, never through these models. They say what each route really answers, status by status
(tests/e2e/test_schema.py checks them against a running server): the error body `{"error": ...}`
for every 4xx/5xx and the pipelines' shapes for the task routes. KServe's are in
`server.api.kserve.openapi`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, RootModel

from server.api.metadata import MODEL_HEADER, TIMEOUT_HEADER, TIMING_HEADERS, VERSION_HEADER

# ---------------------------------------------------------------- errors


class ErrorBody(BaseModel):
    """Every error the server answers (docs/REFERENCE.md §3.1)."""

    error: str = Field(description="what went wrong, for a person to read")


ERROR_TEXT: dict[int, str] = {
    400: "Bad request: a body that is not JSON (or not an object), a malformed parameter or header",
    401: "Missing or wrong API key (only with --api-keys-file)",
    404: "Unknown model or version",
    408: "The request body did not arrive within --body-timeout-s",
    413: "Too large: the request body, or more inputs (model windows) than one request may hold",
    415: "A content type the route does not take",
    422: "Invalid input (422 also for a text longer than the model when truncate is off)",
    429: "The model's queue is full: retry after Retry-After seconds",
    500: "An unexpected failure; the message names the request id to find in the log",
    503: "Not serving (models loading, draining, a model stopped): retry after Retry-After seconds",
    504: "The request's deadline passed before it ran",
}
RETRY_AFTER = {"Retry-After": {"description": "whole seconds to wait before retrying", "schema": {"type": "string"}}}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=` entries: the error body for each status."""
    entries: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {"model": ErrorBody, "description": ERROR_TEXT[code]}
        if code in (429, 503):
            entry["headers"] = RETRY_AFTER
        entries[code] = entry
    return entries


# What a route that reads a body may refuse before looking at it (401: only with API keys).
BODY_ERRORS = (400, 401, 408, 413, 415)
# Every inference route (REST tasks, the HF route, KServe v2 infer).
INFERENCE_ERRORS = (*BODY_ERRORS, 404, 422, 429, 500, 503, 504)
# GET routes naming a model; 422 is what FastAPI's own parameter validation would answer.
MODEL_ERRORS = (401, 404, 422)


def ok(model: Any, description: str, headers: dict[str, Any] | None = None) -> dict[int | str, dict[str, Any]]:
    entry: dict[str, Any] = {"model": model, "description": description}
    if headers:
        entry["headers"] = headers
    return {200: entry}


def _header(description: str) -> dict[str, Any]:
    return {"description": description, "required": True, "schema": {"type": "string"}}


TIMING_DOC = {
    MODEL_HEADER: _header("the model that answered"),
    VERSION_HEADER: _header("its version"),
    **{name: _header("milliseconds (end to end, tokenization, queue, inference)") for name in TIMING_HEADERS},
}
TIMEOUT_PARAMETER = {
    "name": TIMEOUT_HEADER,
    "in": "header",
    "required": False,
    "description": "the request's deadline in milliseconds (capped by --request-timeout-s); 504 when it passes",
    "schema": {"type": "number", "exclusiveMinimum": 0},
}

# ---------------------------------------------------------------- task outputs (the pipelines' JSON)


class Label(BaseModel):
    label: str
    score: float


class ClassifyOutput(RootModel[list[Label] | list[list[Label]]]):
    """text-classification: one input -> a list of labels (top_k of them); a list -> a list per input."""


class Answer(BaseModel):
    score: float
    start: int
    end: int
    answer: str


class QaOutput(RootModel[Answer | list[Answer] | list[Answer | list[Answer]]]):
    """question-answering: an answer, or a list when top_k > 1; for a list of inputs, one per input."""


class Entity(BaseModel):
    # `entity` (and `index`) without aggregation, `entity_group` with one: absent, never null.
    entity: str = Field(None, description="the label, without aggregation")  # type: ignore[assignment]
    entity_group: str = Field(None, description="the aggregated label")  # type: ignore[assignment]
    index: int = Field(None, description="the token's index, without aggregation")  # type: ignore[assignment]
    score: float
    word: str
    start: int | None
    end: int | None


class TagOutput(RootModel[list[Entity] | list[list[Entity]]]):
    """token-classification: a list of entities; for a list of inputs, one list per input."""


class Token(BaseModel):
    token: str
    start: int
    end: int
    score: float = Field(description="the discriminator's probability that it was replaced")
    replaced: bool


class Discrimination(BaseModel):
    tokens: list[Token]
    words: list[Token]
    replaced_rate: float


class DiscriminateOutput(RootModel[Discrimination | list[Discrimination]]):
    """One result per input (a list for a list of inputs)."""


class ZeroShot(BaseModel):
    sequence: str = Field(description="the input text")
    labels: list[str] = Field(description="the candidate labels, best first")
    scores: list[float]


class ZeroShotOutput(RootModel[ZeroShot | list[ZeroShot]]):
    """One result per input (a list for a list of inputs)."""


class PairScore(BaseModel):
    score: float = Field(description="the relevance score (docs/REFERENCE.md §3.9)")
    raw_score: float
    windows: int
    tokens: int


class RerankOutput(RootModel[PairScore | list[PairScore]]):
    """One score per {query, document} pair (the generic route; the rerank routes rank them)."""


class TeiRanked(BaseModel):
    index: int = Field(description="the document's position in the request")
    score: float = Field(description="the relevance score (the raw score with raw_scores)")
    text: str | None = Field(None, description="the document, with return_text")


class TeiRerank(RootModel[list[TeiRanked]]):
    """text-embeddings-inference's answer: every document, best first."""


class RerankDocument(BaseModel):
    text: str


class Ranked(BaseModel):
    index: int = Field(description="the document's position in the request")
    relevance_score: float
    document: RerankDocument | None = Field(None, description="the document, with return_documents")


class RerankUsage(BaseModel):
    total_tokens: int


class RerankResults(BaseModel):
    """Jina's and Cohere's answer: at most top_n documents, best first."""

    id: str = Field(description="the request's id")
    model: str
    results: list[Ranked]
    usage: RerankUsage
    meta: dict[str, Any]


class AnyRerank(RootModel[TeiRerank | RerankResults]):
    """/rerank: text-embeddings-inference's answer, or Jina's for a body with `documents`."""


TASK_OUTPUTS: dict[str, type[RootModel[Any]]] = {
    "classify": ClassifyOutput,
    "qa": QaOutput,
    "tag": TagOutput,
    "discriminate": DiscriminateOutput,
}


class HfOutput(RootModel[ClassifyOutput | QaOutput | TagOutput | DiscriminateOutput | ZeroShotOutput | RerankOutput]):
    """The Hugging Face Inference API's answer for the model's task (text classification: always
    a list of lists)."""


# ---------------------------------------------------------------- /v1/models, health


class Parity(BaseModel):
    max_abs_error: float
    top1_agreement: float


class Source(BaseModel):
    model: str
    revision: str | None
    architecture: str | None


class ModelDescription(BaseModel):
    name: str
    version: str
    task: str
    labels: list[str]
    precision: str
    device: str
    providers: list[str]
    max_seq_len: int
    problem_type: str | None
    parity: Parity
    source: Source
    evaluation: dict[str, Any] | None
    ready: bool
    versions: list[str] = Field(None, description="every version loaded")  # type: ignore[arg-type]


class ModelList(BaseModel):
    models: list[ModelDescription]


class Health(BaseModel):
    status: str = Field(description="live | dead, ready | not ready")
    error: str = Field(None, description="why not, on 503")  # type: ignore[assignment]
