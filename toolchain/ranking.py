"""Reranking (cross-encoder) data and scores, as electra-export, electra-finetune and electra-eval share them:

- judgements: (query, passage, relevance) rows of a CSV / TSV / JSON-lines table, the relevance a
  number >= 0 (binary 0/1, or graded such as TREC's 0-3), grouped by query (the query's text: rows
  of one query need not be adjacent; the groups keep the order of their first rows);
- the score a model gives a pair, from its logits, as the manifest's `score_activation` and
  `relevant_label` say (the serving rule): one logit -> sigmoid(logit) or the logit itself
  (identity), as the sentence-transformers CrossEncoder's activation says; two logits ->
  softmax(logits)[relevant] (== sigmoid(l_relevant - l_other));
- how a pair is tokenized: the query first, the passage second (token types 0 then 1), the passage
  cut (`only_second`) when the pair is longer than the model's window;
- the sentence-transformers names of the two activations a one-logit cross-encoder may have.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.errors import DataError, where
from toolchain.readers import read_table

ACTIVATIONS = ("sigmoid", "identity")  # one logit; two logits are always "softmax"
# What sentence-transformers writes for them (`fullname(nn.Sigmoid())`, `fullname(nn.Identity())`).
SIGMOID_FN = "torch.nn.modules.activation.Sigmoid"
IDENTITY_FN = "torch.nn.modules.linear.Identity"
# The label a two-logit head's score is the probability of, when not named: this one if present (any case).
RELEVANT = "relevant"
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


@dataclass(frozen=True, slots=True)
class RankingColumns:
    query: str = "query"
    passage: str = "passage"
    label: str = "label"


@dataclass(frozen=True, slots=True)
class Judgement:
    query: str
    passage: str
    relevance: float
    line: int


@dataclass(frozen=True, slots=True)
class QueryGroup:
    query: str
    passages: list[str]
    relevances: list[float]

    @property
    def has_relevant(self) -> bool:
        return any(r > 0 for r in self.relevances)


def _relevance(value: Any, at: str) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str) and _NUMBER.match(value.strip()):
        number = float(value.strip())
    else:
        raise DataError(f"{at}: relevance {value!r} is not a number (0/1, or a grade such as 0-3)")
    if not np.isfinite(number) or number < 0:
        raise DataError(f"{at}: relevance {value!r} must be a finite number >= 0")
    return number


def read_judgements(path: Path, columns: RankingColumns) -> list[Judgement]:
    """The (query, passage, relevance) rows of a table; DataError for anything unusable."""
    path = Path(path)
    records = read_table(path, [columns.query, columns.passage, columns.label])
    judgements = []
    for record in records:
        at = where(path, record.line)
        query, passage = record.values[columns.query], record.values[columns.passage]
        for name, cell in ((columns.query, query), (columns.passage, passage)):
            if not isinstance(cell, str):
                raise DataError(f"{at}: column {name!r} must hold text, got {cell!r}")
        if not query.strip():
            raise DataError(f"{at}: empty query")
        judgements.append(Judgement(query, passage, _relevance(record.values[columns.label], at), record.line))
    return judgements


def group_by_query(judgements: Sequence[Judgement]) -> list[QueryGroup]:
    groups: dict[str, QueryGroup] = {}
    for j in judgements:
        group = groups.setdefault(j.query, QueryGroup(j.query, [], []))
        group.passages.append(j.passage)
        group.relevances.append(j.relevance)
    return list(groups.values())


def target_scale(path: Path, judgements: Sequence[Judgement]) -> float:
    """What the relevances are divided by to become BCE targets in [0, 1]: 1 when they already are
    (binary labels, or probabilities), else the largest (graded labels: the top grade becomes 1)."""
    top = max(j.relevance for j in judgements)
    if top <= 0:
        raise DataError(f"{path}: no relevant passage (every relevance is 0): nothing to learn")
    return 1.0 if top <= 1 else top


# ------------------------------------------------------------------ scores


def relevant_index(labels: Sequence[str], wanted: str | None = None) -> int:
    """The label of a two-logit head whose softmax probability is the score.

    wanted: a label name, or its index; default: the label named "relevant" (any case) if there is
    one, else label 1 (the positive class of a head trained on 0/1 labels)."""
    names = [str(n) for n in labels]
    if len(names) != 2:
        raise ValueError(f"a relevant label is chosen among two labels, not {len(names)}")
    if wanted is None:
        named = [i for i, n in enumerate(names) if n.lower() == RELEVANT]
        return named[0] if named else 1
    if wanted in names:
        return names.index(wanted)
    if wanted.strip().isdigit() and int(wanted) < len(names):
        return int(wanted)
    raise ValueError(f"relevant label {wanted!r} is not one of the head's labels ({', '.join(names)})")


def rerank_scores(logits: np.ndarray, activation: str, relevant: int | None = None) -> np.ndarray:
    """[pairs, 1 or 2] logits -> [pairs] scores, by the manifest's rule (float64)."""
    values = np.asarray(logits, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] not in (1, 2):
        raise ValueError(f"rerank logits must be [pairs, 1 or 2], got shape {values.shape}")
    if values.shape[1] == 1:
        if activation == "sigmoid":
            return _sigmoid(values[:, 0])
        if activation == "identity":
            return values[:, 0]
        raise ValueError(f"a one-logit head's score activation is sigmoid or identity, not {activation!r}")
    if activation != "softmax" or relevant not in (0, 1):
        raise ValueError(f"a two-logit head's score is softmax of a relevant label (got {activation!r}, {relevant!r})")
    return _sigmoid(values[:, relevant] - values[:, 1 - relevant])  # == softmax(values)[:, relevant]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # Both branches of a stable sigmoid; np.exp of a large positive number never happens.
    out = np.empty_like(x)
    positive = x >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-x[positive]))
    e = np.exp(x[~positive])
    out[~positive] = e / (1.0 + e)
    return out


# ------------------------------------------------------------------ tokenization


def encode_pairs(
    tokenizer: Any, pairs: Sequence[tuple[str, str]], max_length: int
) -> list[tuple[list[int], list[int]]]:
    """(input_ids, token_type_ids) of each (query, passage), as the server encodes a rerank pair: the
    passage cut (`only_second`) to fit `max_length`; a query that alone leaves no room for its
    passage is cut too (`longest_first`), where `only_second` cannot.

    tokenizer: a `tokenizers.Tokenizer` (a transformers fast tokenizer's `backend_tokenizer`); a copy
    is configured, the given one is left as it was."""
    own = type(tokenizer).from_str(tokenizer.to_str())
    own.no_padding()
    own.enable_truncation(max_length, strategy="only_second")
    try:
        encodings = own.encode_batch([tuple(p) for p in pairs])
    except Exception:  # some query leaves no room: pair by pair, those cut longest-first
        encodings = []
        for pair in pairs:
            try:
                encodings.append(own.encode(*pair))
            except Exception:
                own.enable_truncation(max_length, strategy="longest_first")
                encodings.append(own.encode(*pair))
                own.enable_truncation(max_length, strategy="only_second")
    return [(list(e.ids), list(e.type_ids)) for e in encodings]
