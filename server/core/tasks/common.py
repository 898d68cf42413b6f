"""Helpers shared by the tasks: input validation, score functions, and stride windows built with
the `tokenizers` truncation/overflow API, counted before they are built.

Convention: a malformed `inputs` is 422 (errors.invalid), a malformed `parameters` is 400
(errors.bad_request), so that a client can tell which half of its request to fix.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

import numpy as np
from tokenizers import Encoding, Tokenizer

from server.core.errors import bad_request, invalid, too_large
from server.core.rows import Row
from server.core.tasks.params import type_name
from server.core.tasks.token_budget import count_tokens

T = TypeVar("T")

# ---------------------------------------------------------------- request validation


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


def label_names(labels: Sequence[str], count: int) -> list[str]:
    """Index -> label, falling back to transformers' LABEL_i for heads wider than the manifest says."""
    return [labels[i] if i < len(labels) else f"LABEL_{i}" for i in range(count)]


# ---------------------------------------------------------------- score functions


def softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    shifted = np.exp(x - np.max(x, axis=-1, keepdims=True))
    normalized: np.ndarray = shifted / shifted.sum(axis=-1, keepdims=True)
    return normalized


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
    return max_seq_len - int(tokenizer.num_special_tokens_to_add(False))


# Consecutive windows must advance by at least this share of a window's text: a stride close to
# the window length would turn one text into as many windows as it has tokens (work
# amplification: a 7 KB text with stride 509 was ~1,000 full rows).
MIN_WINDOW_ADVANCE = 1 / 8


def min_advance(room: int) -> int:
    """The fewest new tokens each window must bring, for windows of `room` text tokens."""
    return max(1, math.ceil(room * MIN_WINDOW_ADVANCE))


def max_tokens(text: str) -> int:
    """At least as many as the text's tokens, without tokenizing it: its UTF-8 bytes.

    Not its characters: normalizing (accents stripped through NFD) makes several characters of
    some, each a token of its own, e.g. a Hangul syllable (3 bytes) three jamo, a Bengali vowel
    sign (3 bytes) two signs. No character gives more characters than it has UTF-8 bytes, and a
    token covers at least one character of the normalized text (or, byte-level, one byte)."""
    return len(text.encode("utf-8", "surrogatepass"))


def window_count(n_tokens: int, room: int, step: int) -> int:
    """Windows of `room` tokens, `step` apart, that cover `n_tokens` (what the Rust truncation makes)."""
    return 1 if n_tokens <= room else 1 + -(-(n_tokens - room) // step)


def check_rows(total: int, max_rows: int | None, what: str = "this request") -> None:
    if max_rows is not None and total > max_rows:
        refuse_rows(total, max_rows, what=what)


def refuse_rows(total: int, max_rows: int, *, exact: bool = True, what: str = "this request") -> NoReturn:
    """413: `total` windows needed (or, when counting stopped at the limit, more than that)."""
    needs = f"{total}" if exact else f"at least {total}"
    raise too_large(
        f"{what} needs {needs} model windows; at most {max_rows} are allowed per request (the window "
        "limit, and a request's share of the model's queue): send fewer or shorter texts, or a smaller stride"
    )


def check_stride(tokenizer: Tokenizer, stride: int, max_seq_len: int) -> None:
    # The Rust tokenizer panics on a stride that leaves no room to advance; say it clearly instead.
    limit = content_length(tokenizer, max_seq_len)
    largest = limit - min_advance(limit)
    if stride > largest:
        raise bad_request(
            f"parameter stride must be at most {largest} (windows of {limit} text tokens, the model's "
            f"max_seq_len {max_seq_len} minus its special tokens, must advance by at least "
            f"{min_advance(limit)} tokens), got {stride}"
        )


def tokens_within(windows: int, room: int, step: int) -> int:
    """The most tokens that `windows` windows of `room` tokens, `step` apart, can cover."""
    return 0 if windows <= 0 else room + (windows - 1) * step


def count_single_windows(tokenizer: Tokenizer, texts: list[str], room: int, step: int, max_rows: int | None) -> None:
    """Refuse (413) texts that would need more than `max_rows` windows, before any is built.

    `max_tokens` bounds the windows; only when that bound passes the limit are the long texts
    counted, each only as far as the windows still allowed could reach (token_budget), so a
    refusal costs the budget's work, not the text's."""
    if max_rows is None:
        return
    bounds = [max_tokens(t) for t in texts]
    if sum(window_count(n, room, step) for n in bounds) <= max_rows:
        return
    windows = sum(1 for n in bounds if n <= room)  # a short text is one window, whatever it holds
    for text, bound in zip(texts, bounds, strict=True):
        if bound <= room:
            continue
        counted = count_tokens(tokenizer, text, tokens_within(max_rows - windows, room, step))
        windows += window_count(counted.tokens, room, step)
        if counted.end < len(text) or windows > max_rows:
            refuse_rows(windows, max_rows, exact=counted.exact and counted.end == len(text))


def encode_windows(
    tokenizer: Tokenizer, texts: list[str], max_seq_len: int, stride: int, max_rows: int | None = None
) -> list[list[Encoding]]:
    """Each text as overlapping windows of at most max_seq_len tokens, consecutive windows sharing
    `stride` tokens: exactly what a fast tokenizer returns with return_overflowing_tokens, which is
    how the transformers pipelines window long texts. A text that fits gives one window."""
    check_stride(tokenizer, stride, max_seq_len)
    room = content_length(tokenizer, max_seq_len)
    count_single_windows(tokenizer, texts, room, room - stride, max_rows)
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_seq_len, stride=stride, strategy="longest_first")
    windows = [[encoding, *encoding.overflowing] for encoding in tokenizer.encode_batch(texts)]
    # The count may have skipped one-word runs (a lower bound): the windows built are the truth.
    check_rows(sum(len(w) for w in windows), max_rows)
    return windows


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
