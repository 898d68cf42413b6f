"""Each task's parameters declared once: name, type, bounds and description.

One table per task checks what a request sets (JSON from REST and KServe, the set fields of a
typed gRPC message), with one message format for every protocol, and gives the OpenAPI
schema. What an unset parameter means (often something that depends on the model) is the
task's `resolve`, the one place for defaults.

Convention: a malformed `parameters` is 400 (errors.bad_request), a malformed `inputs` 422.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from server.core.errors import bad_request


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }.get(type(value), type(value).__name__)


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter. `None` (JSON null) is always accepted and means "the default" unless the
    description says otherwise; the task's resolve decides."""

    name: str
    description: str

    def check(self, value: Any) -> Any:
        raise NotImplementedError

    def schema(self) -> dict[str, Any]:
        raise NotImplementedError

    def _fail(self, expected: str, value: Any) -> None:
        raise bad_request(f"parameter {self.name} must be {expected}, got {_shown(value)}")


def _shown(value: Any) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, list | dict):
        return type_name(value)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:40] + "...")
    return type_name(value)


@dataclass(frozen=True, slots=True)
class Int(Param):
    minimum: int = 0
    maximum: int | None = None

    def check(self, value: Any) -> int:
        # bool is an int in Python; `true` as a count is a client bug, not 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad_request(f"parameter {self.name} must be an integer, got {type_name(value)}")
        if value < self.minimum or (self.maximum is not None and value > self.maximum):
            bound = f">= {self.minimum}" if self.maximum is None else f"between {self.minimum} and {self.maximum}"
            raise bad_request(f"parameter {self.name} must be {bound}, got {value}")
        return value

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": ["integer", "null"], "minimum": self.minimum}
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        return schema


@dataclass(frozen=True, slots=True)
class Float(Param):
    minimum: float = -math.inf
    maximum: float = math.inf

    def check(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad_request(f"parameter {self.name} must be a number, got {type_name(value)}")
        number = float(value)
        if not (math.isfinite(number) and self.minimum <= number <= self.maximum):
            raise bad_request(f"parameter {self.name} must be between {self.minimum} and {self.maximum}, got {number}")
        return number

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": ["number", "null"]}
        if math.isfinite(self.minimum):
            schema["minimum"] = self.minimum
        if math.isfinite(self.maximum):
            schema["maximum"] = self.maximum
        return schema


@dataclass(frozen=True, slots=True)
class Bool(Param):
    def check(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise bad_request(f"parameter {self.name} must be a boolean, got {type_name(value)}")
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": ["boolean", "null"]}


@dataclass(frozen=True, slots=True)
class Choice(Param):
    choices: tuple[str, ...] = ()

    def check(self, value: Any) -> str:
        # Case-insensitive like the pipelines, which look the value up as an enum name.
        if not isinstance(value, str) or value.lower() not in self.choices:
            raise bad_request(f"parameter {self.name} must be one of {', '.join(self.choices)}, got {_shown(value)}")
        return value.lower()

    def schema(self) -> dict[str, Any]:
        return {"anyOf": [{"type": "string", "enum": list(self.choices)}, {"type": "null"}]}


@dataclass(frozen=True, slots=True)
class Labels(Param):
    """A list of label names (strings), bounded in count and length."""

    max_items: int = 1024
    max_length: int = 256
    # Also one string of comma-separated labels (the zero-shot pipeline's "a, b, c"), blanks dropped.
    comma_separated: bool = False

    def check(self, value: Any) -> tuple[str, ...]:
        if self.comma_separated and isinstance(value, str):
            value = [label.strip() for label in value.split(",") if label.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            wanted = "a list of strings" + (" or a comma-separated string" if self.comma_separated else "")
            raise bad_request(f"parameter {self.name} must be {wanted}, got {type_name(value)}")
        if len(value) > self.max_items or any(len(v) > self.max_length for v in value):
            raise bad_request(
                f"parameter {self.name} holds at most {self.max_items} labels of at most {self.max_length} characters"
            )
        return tuple(value)

    def schema(self) -> dict[str, Any]:
        items = {"type": "string", "maxLength": self.max_length}
        listed = {"type": "array", "items": items, "maxItems": self.max_items}
        if self.comma_separated:
            return {"anyOf": [listed, {"type": "string"}, {"type": "null"}]}
        return {**listed, "type": ["array", "null"]}


@dataclass(frozen=True, slots=True)
class Text(Param):
    """A string, bounded in length."""

    max_length: int = 1024

    def check(self, value: Any) -> str:
        if not isinstance(value, str):
            raise bad_request(f"parameter {self.name} must be a string, got {type_name(value)}")
        if len(value) > self.max_length:
            raise bad_request(f"parameter {self.name} holds at most {self.max_length} characters")
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": ["string", "null"], "maxLength": self.max_length}


class ParamTable:
    """A task's parameters: checks what a request sets, unknown names refused (a typo must not pass)."""

    def __init__(self, *params: Param) -> None:
        self.params = {p.name: p for p in params}

    @property
    def names(self) -> Sequence[str]:
        return tuple(self.params)

    def from_json(self, parameters: Any) -> dict[str, Any]:
        """The parameters a JSON request sets, checked; null stays None (the task's resolve decides)."""
        if parameters is None:
            return {}
        if not isinstance(parameters, dict):
            raise bad_request(f"parameters must be an object, got {type_name(parameters)}")
        return self.check(parameters)

    def check(self, given: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(str(k) for k in given if k not in self.params)
        if unknown:
            raise bad_request(f"unknown parameter(s): {', '.join(unknown)}; allowed: {', '.join(sorted(self.params))}")
        return {name: None if value is None else self.params[name].check(value) for name, value in given.items()}

    def schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                name: {**param.schema(), "description": param.description} for name, param in self.params.items()
            },
        }


def pick(given: Mapping[str, Any], name: str, default: Any) -> Any:
    """A checked parameter, or the default when unset or null."""
    value = given.get(name)
    return default if value is None else value
