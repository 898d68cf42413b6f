"""Span search for extractive QA, ported from transformers' `question-answering` pipeline.

`select_starts_ends` and `decode_spans` repeat the pipeline's numpy operations one for one
(float32 softmax, the outer product, `np.tril(np.triu(...))`, argmax / argpartition / argsort)
rather than an equivalent formulation: with random or weak heads many candidates tie (at 0.0
once probabilities underflow), and only the same operations on the same arrays pick the same
tied candidates. Everything here is numpy plus `tokenizers.Encoding`; no transformers import.
"""

from __future__ import annotations

import numpy as np
from tokenizers import Encoding

# The pipeline starts from this and keeps the minimum of the windows' null scores.
NO_NULL_SCORE = 1000000
# What the pipeline writes over the logits of tokens that cannot be part of an answer.
MASKED_LOGIT = -10000.0


def decode_spans(
    start: np.ndarray, end: np.ndarray, topk: int, max_answer_len: int, undesired_tokens: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The `topk` best (start, end) token pairs by start_prob * end_prob, with end >= start and at
    most `max_answer_len` tokens, both ends in `undesired_tokens` (1 = allowed; shape [1, L])."""
    if start.ndim == 1:
        start = start[None]
    if end.ndim == 1:
        end = end[None]
    outer = np.matmul(np.expand_dims(start, -1), np.expand_dims(end, 1))
    # A band wider than the sequence keeps the same candidates; the clamp only keeps numpy's
    # arange inside int64 for absurd max_answer_len values.
    band = min(max_answer_len, outer.shape[-1]) - 1
    candidates = np.tril(np.triu(outer), band)

    scores_flat = candidates.flatten()
    if topk == 1:
        idx_sort = np.array([np.argmax(scores_flat)])
    elif len(scores_flat) <= topk:
        # The pipeline tests `<` and then fails in argpartition when the sizes are equal; a full
        # sort is what it means.
        idx_sort = np.argsort(-scores_flat)
    else:
        idx = np.argpartition(-scores_flat, topk)[0:topk]
        idx_sort = idx[np.argsort(-scores_flat[idx])]

    starts, ends = np.unravel_index(idx_sort, candidates.shape)[1:]
    # As in the pipeline, `nonzero()` of the [1, L] mask is a (rows, columns) pair, so index 0
    # counts as allowed whenever any token is; [CLS] at 0 is allowed anyway.
    allowed = undesired_tokens.nonzero()
    desired_spans = np.isin(starts, allowed) & np.isin(ends, allowed)
    starts = starts[desired_spans]
    ends = ends[desired_spans]
    scores = candidates[0, starts, ends]
    return starts, ends, scores


def select_starts_ends(
    start: np.ndarray,
    end: np.ndarray,
    p_mask: np.ndarray,
    min_null_score: float,
    top_k: int,
    max_answer_len: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """One window: softmax over the allowed tokens, then `decode_spans`.

    `start`/`end` are float32 logits [1, L]; `p_mask` is bool [1, L], True where a token cannot
    be in an answer. Windows are never padded here, so the attention mask is all ones and drops
    out. Returns (starts, ends, scores, min_null_score)."""
    undesired_tokens = np.abs(p_mask.astype(np.int64) - 1)
    undesired_tokens_mask = undesired_tokens == 0.0

    start = np.where(undesired_tokens_mask, MASKED_LOGIT, start)
    end = np.where(undesired_tokens_mask, MASKED_LOGIT, end)

    start = np.exp(start - start.max(axis=-1, keepdims=True))
    start = start / start.sum()
    end = np.exp(end - end.max(axis=-1, keepdims=True))
    end = end / end.sum()

    # The pipeline records this only with handle_impossible_answer; it is kept always because the
    # SQuAD 2.0 threshold reports it as the null answer's probability. The caller decides.
    min_null_score = min(min_null_score, (start[0, 0] * end[0, 0]).item())

    # [CLS] is never a span of its own.
    start[0, 0] = end[0, 0] = 0.0
    starts, ends, scores = decode_spans(start, end, top_k, max_answer_len, undesired_tokens)
    return starts, ends, scores, min_null_score


def char_span(encoding: Encoding, s: int, e: int, align_to_words: bool) -> tuple[int, int]:
    """Character offsets in the context (sequence 1) of tokens s..e, widened to whole words when
    asked, as the pipeline's `get_indices` does (falling back to token offsets where a token has
    no word, e.g. [CLS])."""
    if align_to_words:
        start_word = encoding.token_to_word(s)
        end_word = encoding.token_to_word(e)
        start_chars = None if start_word is None else encoding.word_to_chars(start_word, sequence_index=1)
        end_chars = None if end_word is None else encoding.word_to_chars(end_word, sequence_index=1)
        if start_chars is not None and end_chars is not None:
            return start_chars[0], end_chars[1]
    return encoding.offsets[s][0], encoding.offsets[e][1]


def best_span_logit(start: np.ndarray, end: np.ndarray, allowed: np.ndarray, max_answer_len: int) -> float:
    """Highest start_logit[s] + end_logit[e] over spans the pipeline could answer in one window:
    both ends allowed, [CLS] (index 0) excluded, s <= e < s + max_answer_len. -inf when none."""
    positions = np.flatnonzero(allowed)
    positions = positions[positions != 0]
    if positions.size == 0:
        return float("-inf")
    s = start.astype(np.float64)[positions]
    e = end.astype(np.float64)[positions]
    gap = positions[None, :] - positions[:, None]  # end position minus start position
    valid = (gap >= 0) & (gap < max_answer_len)
    return float(np.max(np.where(valid, s[:, None] + e[None, :], -np.inf)))
