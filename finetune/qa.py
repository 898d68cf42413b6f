"""Extractive QA data (SQuAD 1.1 / 2.0 JSON) -> stride-windowed features, the preprocessing of
transformers' run_qa example: question first, the context cut into windows of `max_seq_len`
tokens sharing `doc_stride` tokens (`only_second` truncation with overflow), each window labelled
with the answer's token span, or with [CLS] when the window does not hold the whole answer or the
question has none.

Validation keeps, per window, its example and the character offsets of its context tokens, so that
the validation metric (SQuAD F1 over whole examples, the best span of any window against the
null score) can be computed from the windows' logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from toolchain.errors import DataError
from toolchain.metrics import squad_metrics
from toolchain.readers import QaExample

# Candidates per window on each side when searching the best span (run_qa's n_best_size).
N_BEST = 20


@dataclass(slots=True)
class Windows:
    rows: list[dict[str, Any]]  # model inputs + start_positions / end_positions
    example_index: list[int]  # window -> its example
    offsets: list[list[tuple[int, int] | None]]  # window -> per token: char span in the context, None elsewhere


def windows(
    examples: list[QaExample], tokenizer: Any, max_seq_len: int, doc_stride: int, source: str = "data"
) -> Windows:
    # Leading spaces in questions only waste window room (run_qa strips them too).
    questions = [e.question.lstrip() for e in examples]
    try:
        encoded = tokenizer(
            questions,
            [e.context for e in examples],
            truncation="only_second",
            max_length=max_seq_len,
            stride=doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
    except Exception as exc:  # the Rust tokenizer refuses a question that leaves no room for stride windows
        longest = max(examples, key=lambda e: len(e.question))
        raise DataError(
            f"{source}: questions too long for windows of {max_seq_len} tokens with a stride of {doc_stride} "
            f"(e.g. question {longest.id!r}); raise --max-seq-len or lower --doc-stride ({exc})".splitlines()[0]
        ) from exc
    rows, example_index, offsets = [], [], []
    for i, ids in enumerate(encoded["input_ids"]):
        sample = encoded["overflow_to_sample_mapping"][i]
        sequence_ids = encoded.sequence_ids(i)
        spans = encoded["offset_mapping"][i]
        cls_index = ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in ids else 0
        start = end = cls_index
        example = examples[sample]
        if example.answers:
            answer = example.answers[0]
            start_char, end_char = answer.start, answer.start + len(answer.text)
            context = [j for j, s in enumerate(sequence_ids) if s == 1]
            if context and spans[context[0]][0] <= start_char and spans[context[-1]][1] >= end_char:
                # The window holds the whole answer: its first and last tokens.
                start = next(j for j in context if spans[j][1] > start_char)
                end = next(j for j in reversed(context) if spans[j][0] < end_char)
        rows.append(
            {
                "input_ids": ids,
                "token_type_ids": encoded["token_type_ids"][i],
                "attention_mask": encoded["attention_mask"][i],
                "start_positions": start,
                "end_positions": end,
            }
        )
        example_index.append(sample)
        offsets.append([tuple(spans[j]) if s == 1 else None for j, s in enumerate(sequence_ids)])
    return Windows(rows, example_index, offsets)


def best_answers(
    examples: list[QaExample],
    found: Windows,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    max_answer_len: int,
    allow_empty: bool,
) -> dict[str, str]:
    """Question id -> predicted text: the best span of any window (start + end logit), or "" when the
    null score (start + end logit at [CLS], the smallest over the windows) beats it and empty answers
    are allowed (SQuAD 2.0)."""
    best: dict[int, tuple[float, str]] = {}
    null: dict[int, float] = {}
    for w, sample in enumerate(found.example_index):
        offsets = found.offsets[w]
        start, end = start_logits[w][: len(offsets)], end_logits[w][: len(offsets)]
        null[sample] = min(null.get(sample, np.inf), float(start[0] + end[0]))
        for s in np.argsort(start)[::-1][:N_BEST]:
            if offsets[s] is None:
                continue
            for e in np.argsort(end)[::-1][:N_BEST]:
                if offsets[e] is None or e < s or e - s + 1 > max_answer_len:
                    continue
                score = float(start[s] + end[e])
                if sample not in best or score > best[sample][0]:
                    context = examples[sample].context
                    best[sample] = (score, context[offsets[s][0] : offsets[e][1]])
    answers = {}
    for i, example in enumerate(examples):
        score, text = best.get(i, (-np.inf, ""))
        answers[example.id] = "" if allow_empty and null.get(i, -np.inf) > score else text
    return answers


def metric_function(
    examples: list[QaExample], found: Windows, max_answer_len: int, allow_empty: bool
) -> Callable[[Any], dict[str, float]]:
    """compute_metrics for the Trainer: SQuAD scores of the validation windows' logits."""
    gold = {e.id: [a.text for a in e.answers] for e in examples}

    def compute(prediction: Any) -> dict[str, float]:
        start_logits, end_logits = prediction.predictions[:2]
        predicted = best_answers(examples, found, start_logits, end_logits, max_answer_len, allow_empty)
        scores = squad_metrics(predicted, gold)
        return {k: v for k, v in scores.items() if not k.endswith("total")}

    return compute
