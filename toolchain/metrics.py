"""Task metrics, in points (0-100) as leaderboards report them.

- classification: GLUE's accuracy, F1 (the positive class, label 1, for two labels as in MRPC/QQP;
  macro-averaged otherwise), Matthews correlation (CoLA), Pearson and Spearman correlation
  (STS-B regression), through scikit-learn and scipy; multi-label: micro/macro F1 and exact-set accuracy.
- question answering: SQuAD 2.0's exact match and F1 with the official answer normalisation
  (lower case, no punctuation, no articles a/an/the, single spaces), the best over the gold
  answers, an unanswerable question counting as gold "" (so only an empty prediction scores),
  split into HasAns / NoAns.
- tagging: seqeval's entity-level F1 (CoNLL evaluation: an entity counts when its type and span
  both match), precision and recall, plus token accuracy.
- reranking: MRR@10, nDCG@10 and MAP over queries, each query's candidates ordered by the model's
  scores (trec_eval's definitions: nDCG's gain is the graded relevance itself, a candidate counts as
  relevant for MRR and MAP when its relevance is above 0).

Every function takes plain Python lists; the heavy libraries are imported when a metric is computed,
so that importing this module (the fine-tuning and evaluation code do) stays cheap.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

# The metric each task is judged by (the CLI's gate and the fine-tuning's best checkpoint).
PRIMARY = {
    "single_label_classification": "accuracy",
    "multi_label_classification": "f1",
    "regression": "pearson",
    "qa": "f1",
    "tag": "f1",
    "rerank": "ndcg@10",
}


def primary_metric(task: str, problem_type: str | None = None) -> str:
    return PRIMARY[problem_type or "single_label_classification"] if task == "classify" else PRIMARY[task]


def _points(value: float) -> float:
    return round(100.0 * float(value), 4)


# ------------------------------------------------------------------ classification (GLUE)


def classification_metrics(
    predictions: Sequence[Any], references: Sequence[Any], problem_type: str, num_labels: int
) -> dict[str, float]:
    """predictions/references: label ids (single-label), lists of label ids (multi-label) or
    floats (regression)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        raise ValueError("no examples to score")
    if problem_type == "regression":
        from scipy.stats import pearsonr, spearmanr

        pred = [float(p) for p in predictions]
        ref = [float(r) for r in references]
        if len(set(pred)) < 2 or len(set(ref)) < 2:
            # A correlation is undefined for a constant series; scipy warns and returns nan.
            return {"pearson": 0.0, "spearman": 0.0}
        return {"pearson": _points(pearsonr(pred, ref)[0]), "spearman": _points(spearmanr(pred, ref)[0])}

    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    if problem_type == "multi_label_classification":
        from sklearn.preprocessing import MultiLabelBinarizer

        binarizer = MultiLabelBinarizer(classes=list(range(num_labels)))
        pred = binarizer.fit_transform([sorted(p) for p in predictions])
        ref = binarizer.transform([sorted(r) for r in references])
        return {
            "f1": _points(f1_score(ref, pred, average="micro", zero_division=0)),
            "f1_macro": _points(f1_score(ref, pred, average="macro", zero_division=0)),
            "accuracy": _points(accuracy_score(ref, pred)),  # the exact label set
        }
    pred = [int(p) for p in predictions]
    ref = [int(r) for r in references]
    average = "binary" if num_labels == 2 else "macro"
    return {
        "accuracy": _points(accuracy_score(ref, pred)),
        "f1": _points(f1_score(ref, pred, average=average, labels=list(range(num_labels)), zero_division=0)),
        "matthews": _points(matthews_corrcoef(ref, pred)),
    }


# ------------------------------------------------------------------ SQuAD 2.0

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, punctuation removed, articles removed, whitespace collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _tokens(text: str) -> list[str]:
    return normalize_answer(text).split() if text else []


def exact_match(gold: str, prediction: str) -> int:
    return int(normalize_answer(gold) == normalize_answer(prediction))


def token_f1(gold: str, prediction: str) -> float:
    gold_tokens, pred_tokens = _tokens(gold), _tokens(prediction)
    if not gold_tokens or not pred_tokens:
        # No answer on either side: 1 when both are empty, else 0.
        return float(gold_tokens == pred_tokens)
    same = sum((Counter(gold_tokens) & Counter(pred_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: Mapping[str, str], gold_answers: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """SQuAD 2.0 scores. gold_answers: question id -> its answer texts ([] when unanswerable);
    predictions: question id -> predicted text ("" for no answer), one for every question."""
    missing = [qid for qid in gold_answers if qid not in predictions]
    if missing:
        raise ValueError(f"no prediction for {len(missing)} question(s), e.g. {missing[0]!r}")
    if not gold_answers:
        raise ValueError("no questions to score")
    exact: dict[str, int] = {}
    f1: dict[str, float] = {}
    for qid, answers in gold_answers.items():
        golds = [a for a in answers if normalize_answer(a)] or [""]
        prediction = predictions[qid]
        exact[qid] = max(exact_match(g, prediction) for g in golds)
        f1[qid] = max(token_f1(g, prediction) for g in golds)

    def block(ids: list[str], prefix: str) -> dict[str, float]:
        if not ids:
            return {}
        return {
            f"{prefix}exact": round(100.0 * sum(exact[i] for i in ids) / len(ids), 4),
            f"{prefix}f1": round(100.0 * sum(f1[i] for i in ids) / len(ids), 4),
            f"{prefix}total": float(len(ids)),
        }

    has_answer = [qid for qid, answers in gold_answers.items() if answers]
    no_answer = [qid for qid, answers in gold_answers.items() if not answers]
    return {**block(list(gold_answers), ""), **block(has_answer, "HasAns_"), **block(no_answer, "NoAns_")}


# ------------------------------------------------------------------ tagging (seqeval)


def tagging_metrics(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity-level scores of BIO/IOB2 tag sequences (one list of tags per sentence)."""
    from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predicted sentences for {len(references)} references")
    for i, (pred, ref) in enumerate(zip(predictions, references, strict=True)):
        if len(pred) != len(ref):
            raise ValueError(f"sentence {i}: {len(pred)} predicted tags for {len(ref)} tokens")
    pred, ref = [list(p) for p in predictions], [list(r) for r in references]
    return {
        "f1": _points(f1_score(ref, pred, zero_division=0)),
        "precision": _points(precision_score(ref, pred, zero_division=0)),
        "recall": _points(recall_score(ref, pred, zero_division=0)),
        "accuracy": _points(accuracy_score(ref, pred)),
    }


# ------------------------------------------------------------------ reranking


def _ranked(scores: Sequence[float], relevances: Sequence[float]) -> list[float]:
    """The relevances in the order the scores rank them, best first. Equal scores rank the less
    relevant candidate first (pessimistic ties): a model that scores everything alike earns what a
    worst-case order would, never the order the file happens to list them in."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), float(relevances[i])))
    return [float(relevances[i]) for i in order]


def reciprocal_rank(ranked: Sequence[float], k: int = 10) -> float:
    return next((1.0 / (i + 1) for i, rel in enumerate(ranked[:k]) if rel > 0), 0.0)


def ndcg(ranked: Sequence[float], k: int = 10) -> float:
    def dcg(gains: Sequence[float]) -> float:
        return sum(g / math.log2(i + 2) for i, g in enumerate(gains[:k]))

    ideal = dcg(sorted(ranked, reverse=True))
    return dcg(ranked) / ideal if ideal > 0 else 0.0


def average_precision(ranked: Sequence[float]) -> float:
    hits, total = 0, 0.0
    for i, rel in enumerate(ranked):
        if rel > 0:
            hits += 1
            total += hits / (i + 1)
    return total / hits if hits else 0.0


def ranking_metrics(queries: Sequence[tuple[Sequence[float], Sequence[float]]], k: int = 10) -> dict[str, float]:
    """Each query as (the model's scores, the relevances) of its candidates, in the same order ->
    mrr@k, ndcg@k and map in points, averaged over the queries with at least one relevant candidate
    (a query without any cannot be ranked well or badly: MS MARCO's and BEIR's evaluations skip them)."""
    judged = []
    for scores, relevances in queries:
        if len(scores) != len(relevances):
            raise ValueError(f"{len(scores)} scores for {len(relevances)} candidates")
        if any(float(r) > 0 for r in relevances):
            judged.append(_ranked(scores, relevances))
    if not judged:
        raise ValueError("no query has a relevant candidate: nothing to score")
    n = len(judged)
    return {
        f"mrr@{k}": _points(sum(reciprocal_rank(r, k) for r in judged) / n),
        f"ndcg@{k}": _points(sum(ndcg(r, k) for r in judged) / n),
        "map": _points(sum(average_precision(r) for r in judged) / n),
    }
