"""Sequence classification with the semantics of the `text-classification` pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from tokenizers import Tokenizer

from server.core.errors import invalid
from server.core.manifest import Manifest
from server.core.rows import RowOutputs
from server.core.tasks.base import Encoded, TaskHandler
from server.core.tasks.common import (
    bool_param,
    choice_param,
    int_param,
    item_inputs,
    label_names,
    parameters_dict,
    row_of,
    sigmoid,
    softmax,
    type_name,
)

FUNCTIONS = ("softmax", "sigmoid", "none")
PARAMETERS = ("top_k", "function_to_apply", "truncate")

# One item: (text, text_pair or None).
Item = tuple[str, str | None]


@dataclass(frozen=True, slots=True)
class ClassifyParams:
    top_k: int | None  # None: every label
    function_to_apply: str
    truncate: bool


def default_function(manifest: Manifest) -> str:
    """What the pipeline applies when the caller names no function."""
    if manifest.problem_type == "regression":
        return "none"
    if manifest.problem_type == "multi_label_classification" or len(manifest.labels) == 1:
        return "sigmoid"
    return "softmax"


def _item(value: Any, where: str) -> Item:
    if isinstance(value, str):
        return value, None
    if isinstance(value, dict):
        unknown = sorted(str(k) for k in value if k not in ("text", "text_pair"))
        if unknown:
            raise invalid(f"{where} has unknown key(s) {', '.join(unknown)}; expected text and text_pair")
        text, pair = value.get("text"), value.get("text_pair")
        if not isinstance(text, str):
            raise invalid(f"{where}.text must be a string, got {type_name(text)}")
        if pair is not None and not isinstance(pair, str):
            raise invalid(f"{where}.text_pair must be a string, got {type_name(pair)}")
        return text, pair
    raise invalid(f"{where} must be a string or an object {{text, text_pair}}, got {type_name(value)}")


class ClassifyTask(TaskHandler):
    task: ClassVar[str] = "classify"

    def parse(
        self, inputs: Any, parameters: dict[str, Any] | None, manifest: Manifest
    ) -> tuple[list[Item], ClassifyParams, bool]:
        items, is_list = item_inputs(inputs, _item)

        given = parameters_dict(parameters, PARAMETERS)
        top_k = given.get("top_k", 1)
        if top_k is not None:
            top_k = int_param("top_k", top_k, minimum=1)
        function = given.get("function_to_apply")
        function = (
            default_function(manifest) if function is None else choice_param("function_to_apply", function, FUNCTIONS)
        )
        truncate = given.get("truncate")
        truncate = False if truncate is None else bool_param("truncate", truncate)
        return items, ClassifyParams(top_k=top_k, function_to_apply=function, truncate=truncate), is_list

    def encode(
        self, tokenizer: Tokenizer, items: list[Item], params: ClassifyParams, manifest: Manifest
    ) -> list[Encoded]:
        tokenizer.no_padding()
        if params.truncate:
            # Pairs are cut longest-first, as transformers does for truncation=True.
            tokenizer.enable_truncation(max_length=manifest.max_seq_len, strategy="longest_first")
        else:
            tokenizer.no_truncation()
        # Items normally come from parse() as (text, pair) tuples; plain strings or {text, text_pair}
        # objects (what a KServe v2 front end may hand over directly) are accepted as well.
        pairs = [v if isinstance(v, tuple) else _item(v, f"inputs[{i}]") for i, v in enumerate(items)]
        # An empty text_pair is no pair, as in transformers (`[(text, pair)] if pair else [text]`).
        batch = [(text, pair) if pair else text for text, pair in pairs]
        encodings = tokenizer.encode_batch(batch)
        for i, encoding in enumerate(encodings):
            if len(encoding) > manifest.max_seq_len:
                where = "input" if len(items) == 1 else f"inputs[{i}]"
                raise invalid(
                    f"{where} is {len(encoding)} tokens long, more than the model's maximum of "
                    f"{manifest.max_seq_len}; shorten it or set parameters.truncate to true"
                )
        return [Encoded(rows=[row_of(encoding)]) for encoding in encodings]

    def decode(
        self, encoded: Encoded, outputs: list[RowOutputs], params: ClassifyParams, manifest: Manifest
    ) -> list[dict[str, Any]]:
        logits = np.asarray(outputs[0]["logits"], dtype=np.float64).reshape(-1)
        if params.function_to_apply == "softmax":
            scores = softmax(logits)
        elif params.function_to_apply == "sigmoid":
            scores = sigmoid(logits)
        else:
            scores = logits
        labels = label_names(manifest.labels, scores.shape[0])
        # sorted() is stable, so equal scores keep label order, as in the pipeline.
        ranked = sorted(
            ({"label": labels[i], "score": float(s)} for i, s in enumerate(scores)),
            key=lambda entry: entry["score"],
            reverse=True,
        )
        return ranked if params.top_k is None else ranked[: params.top_k]
