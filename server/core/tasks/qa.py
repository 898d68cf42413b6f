"""Extractive question answering with the semantics of transformers' `question-answering` pipeline.

Parameters and defaults are the pipeline's (transformers 4.57, fast-tokenizer path):

- `top_k` (1): answers to return. As in the pipeline the result is one `{"score", "start",
  "end", "answer"}` object when exactly one answer remains, else a list of them (best first).
- `max_seq_len` (min(384, the model's max_seq_len)): tokens per window, question included.
  Values above the model's maximum are refused.
- `doc_stride` (min(max_seq_len // 2, 128)): tokens of context shared by consecutive windows.
  A context that does not fit beside the question is split into such windows (question first,
  `only_second` truncation with overflow), never cut.
- `max_answer_len` (15): longest answer, in tokens.
Bounds beyond the pipeline: `top_k` at most 100, `max_answer_len` and `max_question_len` at
most 4096, windows that advance by at least an eighth of their context (see
`common.MIN_WINDOW_ADVANCE`), and at most the service's windows per request (413). When `top_k`
outruns a window's spans, the pipeline fills the list with score-0 cells of its span matrix, some
of them ending before they start (`{"score": 0.0, "start": 10, "end": 3, "answer": ""}`); kept
as the pipeline gives them, for parity.

- `max_question_len` (64): accepted and ignored, exactly like the pipeline's fast-tokenizer path
  (only its slow-tokenizer path truncates questions). A question so long that a window holds
  no more than `doc_stride` context tokens beside it is refused (422) when the context needs
  more than one window: the pipeline's tokenizer fails (or panics) there too.
- `handle_impossible_answer` (false): also rank the empty answer, scored with the smallest,
  over windows, of p_start([CLS]) * p_end([CLS]).
- `align_to_words` (true): widen spans to whole words.

Windows are scored independently (softmax within each window, [CLS] and context tokens only)
and the pipeline's merge is kept: answers with the same text, compared case-insensitively, are
one answer whose score is the sum, at the first position found.

Beyond the pipeline, `null_score_diff_threshold` (number, default null = off) applies the
SQuAD 2.0 rule for unanswerable questions. With null = start_logits[CLS] + end_logits[CLS],
taken as the minimum over windows as the official SQuAD v2 scripts do, and best = the highest
start_logit + end_logit of any span the pipeline could return (context tokens, in order, at
most `max_answer_len`) over all windows: when null - best > threshold, the first answer is
`{"score": <the null probability above>, "start": 0, "end": 0, "answer": ""}`, followed by the
best non-empty answers up to `top_k`; otherwise only non-empty answers are returned. When set,
the threshold alone decides about the empty answer, whatever `handle_impossible_answer` says.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from tokenizers import Encoding, Tokenizer

from server.core.errors import ServeError, bad_request, invalid
from server.core.manifest import Manifest
from server.core.rows import RowOutputs
from server.core.tasks.base import Encoded, TaskHandler
from server.core.tasks.common import (
    check_rows,
    item_inputs,
    min_advance,
    row_of,
)
from server.core.tasks.pair_windows import check_pair_windows
from server.core.tasks.params import Bool, Float, Int, ParamTable, type_name
from server.core.tasks.qa_spans import NO_NULL_SCORE, best_span_logit, char_span, select_starts_ends
from server.core.tasks.token_budget import Count

# Each answer is a span the decoder walks for every window: a bound keeps that work small.
MAX_TOP_K = 100
MAX_LENGTH_PARAMETER = 4096
PARAMETERS = ParamTable(
    Int("top_k", "answers to return (default 1)", minimum=1, maximum=MAX_TOP_K),
    Int(
        "doc_stride",
        "context tokens shared by consecutive windows (default min(max_seq_len // 2, 128))",
        minimum=0,
        maximum=MAX_LENGTH_PARAMETER,
    ),
    Int("max_answer_len", "longest answer, in tokens (default 15)", minimum=1, maximum=MAX_LENGTH_PARAMETER),
    Int(
        "max_seq_len",
        "tokens per window, question included (default min(384, the model's)); at most the model's",
        minimum=5,
        maximum=MAX_LENGTH_PARAMETER,
    ),
    Int("max_question_len", "accepted and ignored, as in the pipeline", minimum=1, maximum=MAX_LENGTH_PARAMETER),
    Bool("handle_impossible_answer", "also rank the empty answer (default false)"),
    Bool("align_to_words", "widen answers to whole words (default true)"),
    Float(
        "null_score_diff_threshold",
        "SQuAD 2.0 rule: answer '' when null - best span logit > this (default null: off)",
        minimum=-1e4,
        maximum=1e4,
    ),
)
DEFAULT_MAX_SEQ_LEN = 384
DEFAULT_MAX_DOC_STRIDE = 128
# [CLS] question [SEP] context [SEP] with one token each: anything shorter cannot hold an answer.
MIN_SEQ_LEN = 5
CLS_TOKEN = "[CLS]"

# One item: (question, context).
Item = tuple[str, str]


@dataclass(frozen=True, slots=True)
class QaParams:
    """Resolved parameters (defaults: `resolve_params`)."""

    top_k: int
    doc_stride: int
    max_answer_len: int
    max_seq_len: int
    max_question_len: int
    handle_impossible_answer: bool
    align_to_words: bool
    null_score_diff_threshold: float | None


@dataclass(slots=True)
class QaState:
    """What decode needs of one item: the context and, per window, its encoding and p_mask."""

    context: str
    windows: list[Encoding]
    p_masks: list[np.ndarray]  # bool [L]: True where a token cannot be part of an answer


def item(question: Any, context: Any, where: str) -> Item:
    """One QA input, from any protocol's fields. The pipeline refuses empty questions and contexts."""
    for key, value in (("question", question), ("context", context)):
        if not isinstance(value, str):
            raise invalid(f"{where}.{key} must be a string, got {type_name(value)}")
        if not value:
            raise invalid(f"{where}.{key} must not be empty")
    return question, context


def _item(value: Any, where: str) -> Item:
    if not isinstance(value, dict):
        raise invalid(f"{where} must be an object {{question, context}}, got {type_name(value)}")
    unknown = sorted(str(k) for k in value if k not in ("question", "context"))
    if unknown:
        raise invalid(f"{where} has unknown key(s) {', '.join(unknown)}; expected question and context")
    return item(value.get("question"), value.get("context"), where)


def resolve_params(given: Mapping[str, Any], manifest: Manifest) -> QaParams:
    """Every default in one place; null means "the default" for every parameter, as the pipeline's None."""

    def value(name: str, default: Any) -> Any:
        chosen = given.get(name)
        return default if chosen is None else chosen

    max_seq_len = value("max_seq_len", min(DEFAULT_MAX_SEQ_LEN, manifest.max_seq_len))
    if max_seq_len > manifest.max_seq_len:
        raise bad_request(
            f"parameter max_seq_len must be between {MIN_SEQ_LEN} and {manifest.max_seq_len}, got {max_seq_len}"
        )
    doc_stride = value("doc_stride", min(max_seq_len // 2, DEFAULT_MAX_DOC_STRIDE))
    if doc_stride > max_seq_len:
        raise bad_request(f"parameter doc_stride ({doc_stride}) is larger than max_seq_len ({max_seq_len})")
    return QaParams(
        top_k=value("top_k", 1),
        doc_stride=doc_stride,
        max_answer_len=value("max_answer_len", 15),
        max_seq_len=max_seq_len,
        max_question_len=value("max_question_len", 64),
        handle_impossible_answer=value("handle_impossible_answer", False),
        align_to_words=value("align_to_words", True),
        null_score_diff_threshold=given.get("null_score_diff_threshold"),
    )


def _no_room(
    items: list[Item], i: int, question: Count, room: int, step: int, params: QaParams, specials: int
) -> ServeError:
    where = "input" if len(items) == 1 else f"inputs[{i}]"
    length = f"{question.tokens}" if question.end == len(items[i][0]) else f"over {question.tokens}"
    return invalid(
        f"{where}.question is {length} tokens long, which leaves {max(room, 0)} "
        f"tokens for the context in a window of max_seq_len={params.max_seq_len} "
        f"({specials} special tokens); with doc_stride={params.doc_stride} the windows would "
        f"advance by {max(step, 0)} tokens, fewer than the {min_advance(max(room, 1))} "
        "required, so the context cannot be split into windows; shorten the question, "
        "raise max_seq_len or lower doc_stride"
    )


def _p_mask(encoding: Encoding, cls_id: int | None) -> np.ndarray:
    # Only context tokens (sequence 1) may answer, plus every [CLS]: the pipeline keeps them
    # for models that point there for "no answer".
    mask = np.array([sequence != 1 for sequence in encoding.sequence_ids], dtype=bool)
    if cls_id is not None:
        mask[np.asarray(encoding.ids) == cls_id] = False
    return mask


class QaTask(TaskHandler):
    task: ClassVar[str] = "qa"
    parameters: ClassVar[ParamTable] = PARAMETERS

    def items_from_json(self, inputs: Any) -> tuple[list[Item], bool]:
        return item_inputs(inputs, _item)

    def resolve(self, given: Mapping[str, Any], manifest: Manifest) -> QaParams:
        return resolve_params(given, manifest)

    def encode(
        self, tokenizer: Tokenizer, items: list[Item], params: QaParams, manifest: Manifest, max_rows: int | None = None
    ) -> list[Encoded]:
        tokenizer.no_padding()
        single_specials = tokenizer.num_special_tokens_to_add(False)
        if params.doc_stride > params.max_seq_len - single_specials:
            # The tokenizer's own rule (the pipeline fails on it too).
            raise bad_request(
                f"parameter doc_stride ({params.doc_stride}) must be at most max_seq_len minus "
                f"{single_specials} special tokens ({params.max_seq_len - single_specials})"
            )
        check_pair_windows(
            tokenizer,
            items,
            params.max_seq_len,
            params.doc_stride,
            max_rows,
            lambda i, question, room, step, specials: _no_room(items, i, question, room, step, params, specials),
        )
        tokenizer.enable_truncation(
            max_length=params.max_seq_len, stride=params.doc_stride, strategy="only_second", direction="right"
        )
        cls_id = tokenizer.token_to_id(CLS_TOKEN)
        encoded: list[Encoded] = []
        for (_, context), encoding in zip(items, tokenizer.encode_batch(list(items)), strict=True):
            # The first window, then the overflow in order: the pipeline's features.
            windows = [encoding, *encoding.overflowing]
            state = QaState(context=context, windows=windows, p_masks=[_p_mask(w, cls_id) for w in windows])
            encoded.append(Encoded(rows=[row_of(w) for w in windows], state=state))
        # The count may have skipped one-word runs (a lower bound): the windows built are the truth.
        check_rows(sum(len(e.rows) for e in encoded), max_rows)
        return encoded

    def pipeline_json(self, value: list[dict[str, Any]]) -> Any:
        # The pipeline answers one object when exactly one answer remains, else the list.
        return value[0] if len(value) == 1 else value

    def decode(
        self, encoded: Encoded, outputs: list[RowOutputs], params: QaParams, manifest: Manifest
    ) -> list[dict[str, Any]]:
        state: QaState = encoded.state
        threshold = params.null_score_diff_threshold
        # Aligning to words merges some candidates, so the pipeline looks further down the list.
        pre_topk = params.top_k * 2 + 10 if params.align_to_words else params.top_k
        min_null_score: float = NO_NULL_SCORE
        null_logit, best_logit = math.inf, -math.inf
        answers: list[dict[str, Any]] = []
        by_text: dict[str, dict[str, Any]] = {}  # lower-cased text -> its (first) answer

        for window, p_mask, output in zip(state.windows, state.p_masks, outputs, strict=True):
            start = np.asarray(output["start_logits"], dtype=np.float32).reshape(1, -1)
            end = np.asarray(output["end_logits"], dtype=np.float32).reshape(1, -1)
            starts, ends, scores, min_null_score = select_starts_ends(
                start, end, p_mask[None, :], min_null_score, pre_topk, params.max_answer_len
            )
            for s, e, score in zip(starts, ends, scores, strict=True):
                char_start, char_end = char_span(window, int(s), int(e), params.align_to_words)
                text = state.context[char_start:char_end]
                same = by_text.get(text.lower())
                if same is not None:
                    same["score"] += score.item()
                else:
                    answer = {"score": score.item(), "start": char_start, "end": char_end, "answer": text}
                    answers.append(answer)
                    by_text[text.lower()] = answer
            if threshold is not None:
                null_logit = min(null_logit, float(start[0, 0]) + float(end[0, 0]))
                best_logit = max(best_logit, best_span_logit(start[0], end[0], ~p_mask, params.max_answer_len))

        null_answer = {"score": min_null_score, "start": 0, "end": 0, "answer": ""}
        if threshold is None:
            if params.handle_impossible_answer:
                answers.append(null_answer)
            # sorted() is stable: equal scores keep the order found, the null answer last.
            ranked = sorted(answers, key=lambda a: a["score"], reverse=True)
        else:
            ranked = sorted(answers, key=lambda a: a["score"], reverse=True)
            if null_logit - best_logit > threshold:
                ranked.insert(0, null_answer)
        return ranked[: params.top_k]
