"""Token tagging data (CoNLL columns, BIO / IOB2 tags for NER or chunking) -> the label set and
features labelled on each word's first sub-token (-100, ignored by the loss, on the others and on
special tokens), as transformers' run_ner example does by default."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.errors import DataError, where
from toolchain.metrics import tagging_metrics
from toolchain.readers import TaggedSentence, read_conll

IGNORED = -100
_BIO = re.compile(r"^(O|[BI]-.+)$")


def label_names(
    path: Path, sentences: list[TaggedSentence], labels: list[str] | None, base_names: list[str] | None
) -> list[str]:
    """O first, then B- and I- of each entity type in name order (or --labels, or the base tagger's order)."""
    seen: dict[str, int] = {}
    for sentence in sentences:
        for i, tag in enumerate(sentence.tags):
            seen.setdefault(tag, sentence.line + i)
    for tag, line in seen.items():
        if not _BIO.match(tag):
            raise DataError(f"{where(path, line)}: tag {tag!r} is not a BIO/IOB2 tag (O, B-TYPE or I-TYPE)")
    if labels:
        return list(labels)
    types = sorted({tag[2:] for tag in seen if tag != "O"})
    names = ["O", *[f"{prefix}-{kind}" for kind in types for prefix in ("B", "I")]]
    if base_names and set(names) <= set(base_names):
        return list(base_names)
    return names


def read_sentences(
    path: Path, names: list[str] | None = None, **options: Any
) -> tuple[list[TaggedSentence], list[str]]:
    """(sentences, label names); every tag must be in the label set (from this file unless given)."""
    sentences = read_conll(path)
    if names is None:
        names = label_names(path, sentences, options.get("labels"), options.get("base_names"))
    known = set(names)
    for sentence in sentences:
        for i, tag in enumerate(sentence.tags):
            if tag not in known:
                raise DataError(
                    f"{where(path, sentence.line + i)}: tag {tag!r} is not in the label set ({', '.join(names)})"
                )
    return sentences, names


def features(sentences: list[TaggedSentence], tokenizer: Any, max_length: int, names: list[str]) -> list[dict]:
    index = {name: i for i, name in enumerate(names)}
    encoded = tokenizer([s.tokens for s in sentences], is_split_into_words=True, truncation=True, max_length=max_length)
    rows = []
    for i, sentence in enumerate(sentences):
        labels, previous = [], None
        for word in encoded.word_ids(i):
            labels.append(IGNORED if word is None or word == previous else index[sentence.tags[word]])
            previous = word
        rows.append(
            {
                "input_ids": encoded["input_ids"][i],
                "token_type_ids": encoded["token_type_ids"][i],
                "attention_mask": encoded["attention_mask"][i],
                "labels": labels,
            }
        )
    return rows


def metric_function(names: list[str]) -> Callable[[Any], dict[str, float]]:
    """compute_metrics for the Trainer: seqeval scores on the labelled (first sub-token) positions."""

    def compute(prediction: Any) -> dict[str, float]:
        predicted = np.asarray(prediction.predictions).argmax(-1)
        gold = np.asarray(prediction.label_ids)
        pred_tags, gold_tags = [], []
        for p_row, g_row in zip(predicted, gold, strict=True):
            keep = g_row != IGNORED
            pred_tags.append([names[i] for i in p_row[keep]])
            gold_tags.append([names[i] for i in g_row[keep]])
        return tagging_metrics(pred_tags, gold_tags)

    return compute
