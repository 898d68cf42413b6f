"""Request schemas and examples for the OpenAPI document only: the hot path parses bodies with
orjson and validates once, in the task modules, rather than through per-item pydantic models.
Each task's `parameters` schema comes from its parameter table (the one that validates them)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from server.core.tasks import TASKS, ZERO_SHOT

# Every handler a route may serve with: the manifests' tasks and zero-shot (on a classifier).
HANDLERS = {**TASKS, ZERO_SHOT.task: ZERO_SHOT}


class TaskRequest(BaseModel):
    model: str | None = Field(None, description="model name; optional when one loaded model serves the task")
    model_version: str | None = Field(None, description="a loaded version of the model (default: the one serving)")
    inputs: Any = Field(..., description="one input or a non-empty list of inputs")
    parameters: dict[str, Any] | None = Field(None, description="task parameters (Hugging Face pipeline names)")


EXAMPLES: dict[str, dict[str, Any]] = {
    "classify": {
        "single": {"value": {"inputs": "A delightful, well-paced film.", "parameters": {"top_k": None}}},
        "pair": {"value": {"inputs": {"text": "A man is eating.", "text_pair": "Someone eats."}}},
        "batch": {"value": {"inputs": ["Great!", "Terrible."], "parameters": {"function_to_apply": "softmax"}}},
    },
    "qa": {
        "single": {
            "value": {
                "inputs": {"question": "Who proposed ELECTRA?", "context": "ELECTRA was proposed by Clark et al."},
                "parameters": {"top_k": 1, "handle_impossible_answer": True},
            }
        }
    },
    "tag": {
        "single": {
            "value": {"inputs": "Ada Lovelace worked in London.", "parameters": {"aggregation_strategy": "simple"}}
        }
    },
    "discriminate": {
        "single": {"value": {"inputs": "The chef cooked the meal.", "parameters": {"threshold": 0.5}}},
    },
    "zero-shot": {
        "single": {
            "value": {
                "inputs": "The new phone's battery lasts two days.",
                "parameters": {"candidate_labels": ["technology", "sports", "cooking"]},
            }
        },
        "multi_label": {
            "value": {
                "inputs": ["I loved the food but the service was slow."],
                "parameters": {
                    "candidate_labels": "food, service, price",
                    "hypothesis_template": "This review is about {}.",
                    "multi_label": True,
                },
            }
        },
    },
}


def _one_or_many(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "anyOf": [item, {"type": "array", "items": item, "minItems": 1}],
        "description": "one input or a non-empty list of inputs (at most --max-inputs-per-request: else 413)",
    }


_TEXT = {"type": "string", "description": 'a text ("" is a valid one)'}
# What each task's `items_from_json` takes; anything else is a 422.
INPUTS: dict[str, dict[str, Any]] = {
    "classify": _one_or_many(
        {
            "anyOf": [
                _TEXT,
                {
                    "type": "object",
                    "required": ["text"],
                    "properties": {"text": {"type": "string"}, "text_pair": {"type": ["string", "null"]}},
                    "additionalProperties": False,
                },
            ]
        }
    ),
    "qa": _one_or_many(
        {
            "type": "object",
            "required": ["question", "context"],
            "properties": {
                "question": {"type": "string", "minLength": 1},
                "context": {"type": "string", "minLength": 1},
            },
            "additionalProperties": False,
        }
    ),
    "tag": _one_or_many(_TEXT),
    "discriminate": _one_or_many(_TEXT),
    "zero-shot": _one_or_many(_TEXT),
    "rerank": {
        "type": "object",
        "required": ["query", "documents"],
        "properties": {
            "query": {"type": "string", "minLength": 1},
            "documents": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        },
        "additionalProperties": False,
    },
}


def request_schema(task: str) -> dict[str, Any]:
    schema = TaskRequest.model_json_schema()
    schema["properties"]["inputs"] = INPUTS[task]
    schema["properties"]["parameters"] = {
        "anyOf": [HANDLERS[task].parameters.schema(), {"type": "null"}],
        "description": "task parameters (Hugging Face pipeline names)",
    }
    return schema


def hf_request_schema() -> dict[str, Any]:
    """`POST /models/{name}`: the body of the model's task route."""
    schema = TaskRequest.model_json_schema()
    del schema["properties"]["model"]
    schema["properties"]["inputs"] = {
        "anyOf": [INPUTS[task] for task in HANDLERS],
        "description": "the inputs of the model's task",
    }
    schema["properties"]["parameters"] = {
        "anyOf": [HANDLERS[task].parameters.schema() for task in HANDLERS] + [{"type": "null"}],
        "description": "the parameters of the model's task (Hugging Face pipeline names)",
    }
    schema["title"] = "HfRequest"
    return schema


def openapi_body(task: str | None) -> dict[str, Any]:
    """The request body of a task route (None: the Hugging Face route, whose model names the task)."""
    if task is None:
        content = {"schema": hf_request_schema(), "examples": {"classify": EXAMPLES["classify"]["single"]}}
    else:
        content = {"schema": request_schema(task), "examples": EXAMPLES[task]}
    return {"requestBody": {"required": True, "content": {"application/json": content}}}
