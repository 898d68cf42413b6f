"""Helpers shared by the classify, tag and discriminate tasks: request validation, score
functions and stride windows built with the `tokenizers` truncation/overflow API.

Convention: a malformed `inputs` is 422 (errors.invalid), a malformed `parameters` is 400
(errors.bad_request), so that a client can tell which half of its request to fix.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import numpy as np
from tokenizers import Encoding, Tokenizer

from server.core.errors import bad_request, invalid
from server.core.rows import Row

T = TypeVar("T")

# ---------------------------------------------------------------- request validation


def parameters_dict(parameters: Any, allowed: Iterable[str]) -> dict[str, Any]:
    """The request's parameters as a dict; unknown names are rejected (a typo must not pass silently)."""
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise bad_request(f"parameters must be an object, got {type_name(parameters)}")
    allowed = set(allowed)
    unknown = sorted(str(k) for k in parameters if k not in allowed)
    if unknown:
        raise bad_request(f"unknown parameter(s): {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return parameters


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


def text_inputs(inputs: Any) -> tuple[list[str], bool]:
    """`inputs` as a string or a non-empty list of strings -> (texts, is_list)."""
    if isinstance(inputs, str):
        return [inputs], False
    if isinstance(inputs, list):
        if not inputs:
            raise invalid("inputs must not be an empty list")
        for i, item in enumerate(inputs):
            if not isinstance(item, str):
                raise invalid(f"inputs[{i}] must be a string, got {type_name(item)}")
        return list(inputs), True
    raise invalid(f"inputs must be a string or a list of strings, got {type_name(inputs)}")


def item_inputs(inputs: Any, parse_item: Callable[[Any, str], T]) -> tuple[list[T], bool]:
    """`inputs` as one item or a non-empty list of items, each checked by `parse_item(value, where)`."""
    if isinstance(inputs, list):
        if not inputs:
            raise invalid("inputs must not be an empty list")
        return [parse_item(v, f"inputs[{i}]") for i, v in enumerate(inputs)], True
    return [parse_item(inputs, "inputs")], False


def int_param(name: str, value: Any, *, minimum: int, maximum: int | None = None) -> int:
    # bool is an int in Python; `true` as a count is a client bug, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"parameter {name} must be an integer, got {type_name(value)}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise bad_request(f"parameter {name} must be {bound}, got {value}")
    return value


def bool_param(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise bad_request(f"parameter {name} must be a boolean, got {type_name(value)}")
    return value


def float_param(name: str, value: Any, *, minimum: float, maximum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_request(f"parameter {name} must be a number, got {type_name(value)}")
    value = float(value)
    if not (math.isfinite(value) and minimum <= value <= maximum):
        raise bad_request(f"parameter {name} must be between {minimum} and {maximum}, got {value}")
    return value


def choice_param(name: str, value: Any, choices: Sequence[str]) -> str:
    # Case-insensitive like the pipelines, which look the value up as an enum name.
    if not isinstance(value, str) or value.lower() not in choices:
        raise bad_request(f"parameter {name} must be one of {', '.join(choices)}, got {value!r}")
    return value.lower()


def label_names(labels: Sequence[str], count: int) -> list[str]:
    """Index -> label, falling back to transformers' LABEL_i for heads wider than the manifest says."""
    return [labels[i] if i < len(labels) else f"LABEL_{i}" for i in range(count)]


# ---------------------------------------------------------------- score functions


def softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    shifted = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    # The tanh form never overflows (1 / (1 + exp(-x)) warns for x << 0).
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


# ---------------------------------------------------------------- tokenization


def row_of(encoding: Encoding) -> Row:
    return Row(
        input_ids=np.asarray(encoding.ids, dtype=np.int64),
        token_type_ids=np.asarray(encoding.type_ids, dtype=np.int64),
    )


def content_length(tokenizer: Tokenizer, max_seq_len: int) -> int:
    """Tokens of text that fit in one window of a single sequence (the rest are [CLS]/[SEP])."""
    return max_seq_len - tokenizer.num_special_tokens_to_add(False)


def check_stride(tokenizer: Tokenizer, stride: int, max_seq_len: int) -> None:
    # The Rust tokenizer panics on a stride that leaves no room to advance; say it clearly instead.
    limit = content_length(tokenizer, max_seq_len)
    if stride >= limit:
        raise bad_request(
            f"parameter stride must be less than {limit} (the model's max_seq_len {max_seq_len} "
            f"minus its special tokens), got {stride}"
        )


def encode_windows(tokenizer: Tokenizer, texts: list[str], max_seq_len: int, stride: int) -> list[list[Encoding]]:
    """Each text as overlapping windows of at most max_seq_len tokens, consecutive windows sharing
    `stride` tokens: exactly what a fast tokenizer returns with return_overflowing_tokens, which is
    how the transformers pipelines window long texts. A text that fits gives one window."""
    check_stride(tokenizer, stride, max_seq_len)
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_seq_len, stride=stride, strategy="longest_first")
    return [[encoding, *encoding.overflowing] for encoding in tokenizer.encode_batch(texts)]


def window_starts(count: int, step: int) -> list[int]:
    """Index, among the text's tokens (special tokens excluded), of each window's first token.

    The Rust truncation cuts windows at multiples of (content length - stride) and stops at the
    window that reaches the end, so window k starts at k * step."""
    return [k * step for k in range(count)]


def max_context_owners(window_lengths: Sequence[int], starts: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """For every text token, the window that scores it: the one where it has the most context on
    both sides (SQuAD's `_check_is_max_context`: min(left, right) + 0.01 * window length; the
    earlier window wins ties). Returns (window index, position among that window's text tokens)."""
    total = max((s + n for s, n in zip(starts, window_lengths, strict=True)), default=0)
    best = np.full(total, -np.inf)
    owner = np.zeros(total, dtype=np.int64)
    position = np.zeros(total, dtype=np.int64)
    for k, (start, length) in enumerate(zip(starts, window_lengths, strict=True)):
        local = np.arange(length)
        score = np.minimum(local, length - 1 - local) + 0.01 * length
        span = slice(start, start + length)
        better = score > best[span]
        best[span] = np.where(better, score, best[span])
        owner[span] = np.where(better, k, owner[span])
        position[span] = np.where(better, local, position[span])
    return owner, position


def text_positions(encoding: Encoding) -> list[int]:
    """Positions of an encoding's text tokens (everything but [CLS]/[SEP]/padding)."""
    return [i for i, special in enumerate(encoding.special_tokens_mask) if not special]
