"""Sequence classification data (GLUE-style): the columns of a table -> examples with label ids and
the label set (`config.id2label`), as electra-finetune trains on them and electra-eval scores them.

The label column may hold label names or ids. The problem type is single-label, multi-label (a
JSON list, or names joined by `--label-separator` in CSV/TSV) or regression (numbers), detected
from the values unless given.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolchain.errors import DataError, where
from toolchain.readers import Record, read_table

PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")
_INTEGER = re.compile(r"^[+-]?\d+$")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


@dataclass(frozen=True, slots=True)
class Columns:
    text: str = "text"
    pair: str | None = None
    label: str = "label"


@dataclass(frozen=True, slots=True)
class Example:
    text: str
    pair: str | None
    label: Any  # int (single-label), list[int] (multi-label), float (regression)


@dataclass(frozen=True, slots=True)
class LabelSpace:
    problem_type: str
    names: list[str]  # index -> name; one entry (the label column's name) for regression

    @property
    def num_labels(self) -> int:
        return len(self.names)

    def config(self) -> dict[str, Any]:
        return {
            "num_labels": self.num_labels,
            "id2label": dict(enumerate(self.names)),
            "label2id": {name: i for i, name in enumerate(self.names)},
            "problem_type": self.problem_type,
        }


def _values(value: Any, problem_type: str | None, separator: str) -> list[Any]:
    """A cell as a list of label values (one unless multi-label)."""
    if isinstance(value, list):
        return value
    if problem_type == "multi_label_classification" and isinstance(value, str):
        if value.strip().startswith("["):
            try:
                parsed = json.loads(value)
                if isinstance(parsed, list):
                    return parsed
            except json.JSONDecodeError:
                pass
        return [part.strip() for part in value.split(separator) if part.strip()]
    return [value]


def _is_integer(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, str) and bool(_INTEGER.match(value.strip()))
    )


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)) or (
        isinstance(value, str) and bool(_NUMBER.match(value.strip()))
    )


def detect_problem_type(cells: list[Any]) -> str:
    if any(isinstance(c, list) for c in cells):
        return "multi_label_classification"
    if all(_is_number(c) for c in cells) and not all(_is_integer(c) for c in cells):
        return "regression"
    return "single_label_classification"


def label_space(
    path: Path,
    records: list[Record],
    column: str,
    *,
    problem_type: str = "auto",
    labels: list[str] | None = None,
    base_names: list[str] | None = None,
    separator: str = ",",
) -> LabelSpace:
    """The label set from the training file (or --labels), in a stable order."""
    cells = [r.values[column] for r in records]
    if problem_type == "auto":
        problem_type = detect_problem_type(cells)
    if problem_type not in PROBLEM_TYPES:
        raise DataError(f"unknown problem type {problem_type!r}: choose auto or one of {', '.join(PROBLEM_TYPES)}")
    if problem_type == "regression":
        return LabelSpace(problem_type, [labels[0] if labels else column])
    if labels:
        return LabelSpace(problem_type, list(labels))
    values = [v for cell in cells for v in _values(cell, problem_type, separator)]
    if not values:
        raise DataError(f"{path}: the label column {column!r} holds no labels")
    if all(_is_integer(v) for v in values):
        ids = sorted({int(v) for v in values})
        if ids[0] < 0:
            raise DataError(f"{path}: label id {ids[0]} is negative (unlabelled rows, as in GLUE test files?)")
        count = max(ids[-1] + 1, 2)
        if base_names and len(base_names) == count:
            return LabelSpace(problem_type, list(base_names))
        return LabelSpace(problem_type, [f"LABEL_{i}" for i in range(count)])
    names = sorted({str(v) for v in values})
    if base_names and set(names) <= set(base_names):
        return LabelSpace(problem_type, list(base_names))  # continuing a classifier keeps its ids
    return LabelSpace(problem_type, names)


def _label_id(value: Any, space: LabelSpace, at: str) -> int:
    name = str(value).strip() if isinstance(value, str) else value
    if isinstance(name, str) and name in space.names:
        return space.names.index(name)
    if _is_integer(value) and 0 <= int(value) < space.num_labels:
        return int(value)
    raise DataError(f"{at}: label {value!r} is not in the label set ({', '.join(space.names)})")


def encode_label(value: Any, space: LabelSpace, at: str, separator: str = ",") -> Any:
    if space.problem_type == "regression":
        if not _is_number(value):
            raise DataError(f"{at}: label {value!r} is not a number (regression)")
        return float(value)
    ids = [_label_id(v, space, at) for v in _values(value, space.problem_type, separator)]
    if space.problem_type == "multi_label_classification":
        return sorted(set(ids))
    if len(ids) != 1:
        raise DataError(f"{at}: expected one label, got {value!r}")
    return ids[0]


def read_examples(path: Path, columns: Columns, space: LabelSpace | None = None, **label_options: Any):
    """(examples, label space) of a table; the label space comes from this file unless given."""
    required = [columns.text, *([columns.pair] if columns.pair else []), columns.label]
    records = read_table(path, required)
    separator = label_options.get("separator", ",")
    if space is None:
        space = label_space(path, records, columns.label, **label_options)
    examples = []
    for record in records:
        text = record.values[columns.text]
        pair = record.values[columns.pair] if columns.pair else None
        for name, cell in ((columns.text, text), (columns.pair, pair)):
            if name and not isinstance(cell, str):
                raise DataError(f"{where(path, record.line)}: column {name!r} must hold text, got {cell!r}")
        label = encode_label(record.values[columns.label], space, where(path, record.line), separator)
        examples.append(Example(text, pair, label))
    return examples, space
