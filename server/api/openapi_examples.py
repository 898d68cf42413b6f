"""Request schemas and examples for the OpenAPI document only: the hot path parses bodies with
orjson and validates once, in the task modules, rather than through per-item pydantic models.
Each task's `parameters` schema comes from its parameter table (the one that validates them)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from server.core.tasks import TASKS


class TaskRequest(BaseModel):
    model: str | None = Field(None, description="model name; optional when one loaded model serves the task")
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
}


def request_schema(task: str) -> dict[str, Any]:
    schema = TaskRequest.model_json_schema()
    schema["properties"]["parameters"] = {
        "anyOf": [TASKS[task].parameters.schema(), {"type": "null"}],
        "description": "task parameters (Hugging Face pipeline names)",
    }
    return schema


def openapi_body(task: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": request_schema(task), "examples": EXAMPLES[task]}},
        }
    }
