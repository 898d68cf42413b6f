"""Replaced-token detection data (ELECTRA's own objective) for the discriminator head: a word-level
CoNLL file whose tags say whether each word is original (`O`) or a replacement (`R`); every
sub-token of a replaced word is labelled 1, everything else 0 (special tokens included, as in
ELECTRA's pre-training loss, which covers every attended position)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.errors import DataError, where
from toolchain.readers import TaggedSentence, read_conll

TAGS = ("O", "R")


def read_sentences(path: Path) -> list[TaggedSentence]:
    sentences = read_conll(path)
    for sentence in sentences:
        for i, tag in enumerate(sentence.tags):
            if tag not in TAGS:
                raise DataError(f"{where(path, sentence.line + i)}: tag {tag!r} is not O (original) or R (replaced)")
    return sentences


def features(sentences: list[TaggedSentence], tokenizer: Any, max_length: int) -> list[dict[str, Any]]:
    encoded = tokenizer([s.tokens for s in sentences], is_split_into_words=True, truncation=True, max_length=max_length)
    rows = []
    for i, sentence in enumerate(sentences):
        labels = [0 if w is None else int(sentence.tags[w] == "R") for w in encoded.word_ids(i)]
        rows.append({key: encoded[key][i] for key in ("input_ids", "token_type_ids", "attention_mask")})
        rows[-1]["labels"] = labels
    return rows


def metric_function() -> Callable[[Any], dict[str, float]]:
    """Token accuracy and F1 of the `replaced` decision (logit > 0) over the attended positions."""

    def compute(prediction: Any) -> dict[str, float]:
        from sklearn.metrics import accuracy_score, f1_score

        logits, labels = np.asarray(prediction.predictions), np.asarray(prediction.label_ids)
        keep = labels != -100
        predicted, gold = (logits[keep] > 0).astype(int), labels[keep].astype(int)
        return {
            "accuracy": round(100.0 * accuracy_score(gold, predicted), 4),
            "f1": round(100.0 * f1_score(gold, predicted, zero_division=0), 4),
        }

    return compute
