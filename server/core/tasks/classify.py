"""Sequence classification with the semantics of the `text-classification` pipeline."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from tokenizers import Tokenizer

from server.core.errors import ServeError, invalid
from server.core.manifest import Manifest
from server.core.rows import RowOutputs
from server.core.tasks.base import Encoded, TaskHandler
from server.core.tasks.common import check_rows, item_inputs, label_names, row_of, sigmoid, softmax
from server.core.tasks.params import Bool, Choice, Int, ParamTable, type_name
from server.core.tasks.token_budget import PIECE_CHARS, count_tokens, prefix_for

FUNCTIONS = ("softmax", "sigmoid", "none")
# Far more than any head has labels; only there so that no request asks for an absurd list.
MAX_TOP_K = 10_000
PARAMETERS = ParamTable(
    Int("top_k", "labels to return, best first (default 1); null: every label", minimum=1, maximum=MAX_TOP_K),
    Choice(
        "function_to_apply",
        "score function (default: sigmoid for a multi-label or one-label head, none for regression, else softmax)",
        choices=FUNCTIONS,
    ),
    Bool("truncate", "cut texts longer than the model, pairs longest-first (default false: such a text is a 422)"),
)

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


def item(text: Any, text_pair: Any, where: str) -> Item:
    """One classification input, from any protocol's fields."""
    if not isinstance(text, str):
        raise invalid(f"{where}.text must be a string, got {type_name(text)}")
    if text_pair is not None and not isinstance(text_pair, str):
        raise invalid(f"{where}.text_pair must be a string, got {type_name(text_pair)}")
    # An empty text_pair is no pair, as in transformers (`[(text, pair)] if pair else [text]`).
    return text, text_pair or None


def _item(value: Any, where: str) -> Item:
    if isinstance(value, str):
        return value, None
    if isinstance(value, dict):
        unknown = sorted(str(k) for k in value if k not in ("text", "text_pair"))
        if unknown:
            raise invalid(f"{where} has unknown key(s) {', '.join(unknown)}; expected text and text_pair")
        return item(value.get("text"), value.get("text_pair"), where)
    raise invalid(f"{where} must be a string or an object {{text, text_pair}}, got {type_name(value)}")


class ClassifyTask(TaskHandler):
    task: ClassVar[str] = "classify"
    parameters: ClassVar[ParamTable] = PARAMETERS

    def items_from_json(self, inputs: Any) -> tuple[list[Item], bool]:
        return item_inputs(inputs, _item)

    def resolve(self, given: Mapping[str, Any], manifest: Manifest) -> ClassifyParams:
        function = given.get("function_to_apply")
        return ClassifyParams(
            top_k=given.get("top_k", 1),  # null (None): every label
            function_to_apply=default_function(manifest) if function is None else function,
            truncate=bool(given.get("truncate") or False),
        )

    def encode(
        self,
        tokenizer: Tokenizer,
        items: list[Item],
        params: ClassifyParams,
        manifest: Manifest,
        max_rows: int | None = None,
    ) -> list[Encoded]:
        check_rows(len(items), max_rows)
        tokenizer.no_padding()
        if params.truncate:
            # Only the first max_seq_len tokens of each text can be kept: the rest is never tokenized.
            items = [_kept(tokenizer, item, manifest.max_seq_len) for item in items]
        else:
            _check_lengths(tokenizer, items, manifest.max_seq_len)
        if params.truncate:
            # Pairs are cut longest-first, as transformers does for truncation=True.
            tokenizer.enable_truncation(max_length=manifest.max_seq_len, strategy="longest_first")
        else:
            tokenizer.no_truncation()
        encodings = tokenizer.encode_batch([(text, pair) if pair else text for text, pair in items])
        for i, encoding in enumerate(encodings):
            if len(encoding) > manifest.max_seq_len:
                where = "input" if len(items) == 1 else f"inputs[{i}]"
                raise _too_long(where, f"{len(encoding)}", manifest.max_seq_len)
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
        entries: list[dict[str, Any]] = [{"label": labels[i], "score": float(s)} for i, s in enumerate(scores)]
        ranked = sorted(entries, key=lambda entry: entry["score"], reverse=True)
        return ranked if params.top_k is None else ranked[: params.top_k]


def _too_long(where: str, length: str, max_seq_len: int) -> ServeError:
    return invalid(
        f"{where} is {length} tokens long, more than the model's maximum of "
        f"{max_seq_len}; shorten it or set parameters.truncate to true"
    )


def _check_lengths(tokenizer: Tokenizer, items: list[Item], max_seq_len: int) -> None:
    """Refuse (422) a text too long for the model after counting at most max_seq_len of its
    tokens: only texts longer than a counting piece could cost more than that to tokenize whole."""
    for i, (text, pair) in enumerate(items):
        if max(len(text), len(pair or "")) <= PIECE_CHARS:
            continue
        tokens = 0
        for part in (text, pair):
            if part:
                counted = count_tokens(tokenizer, part, max_seq_len - tokens)
                tokens += counted.tokens
                if tokens > max_seq_len:
                    raise _too_long("input" if len(items) == 1 else f"inputs[{i}]", f"over {max_seq_len}", max_seq_len)


def _kept(tokenizer: Tokenizer, item: Item, max_seq_len: int) -> Item:
    text, pair = item
    return prefix_for(tokenizer, text, max_seq_len), prefix_for(tokenizer, pair, max_seq_len) if pair else pair
