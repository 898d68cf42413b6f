"""A labelled file as an evaluation set: the requests every variant answers (pipeline-shaped inputs
and parameters, the same for PyTorch, offline ONNX and the server) and the scoring of their answers.

- classify: each row's text (and pair) with `top_k: null`, scored on the top label (single-label),
  the labels scoring above 0.5 (multi-label) or the score (regression).
- qa: each question with `handle_impossible_answer` (SQuAD 2.0 data: the empty answer competes),
  and the model's window length and stride, scored with SQuAD's exact match and F1.
- tag: each sentence's words joined by spaces, `aggregation_strategy: none` and no ignored labels,
  so that every token comes back with its label; a word takes the label of its first sub-token (as
  the tagger was trained), scored with seqeval.
- rerank: each query with its passages (`{"query", "documents"}`), answered with one score per
  passage in their order, scored with MRR@10, nDCG@10 and MAP (`toolchain.metrics.ranking_metrics`);
  queries without a relevant passage are left out (no order of theirs is better than another), and
  every variant cuts a pair to the same window (`max_seq_len`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolchain import metrics
from toolchain.classification import Columns, LabelSpace, read_examples
from toolchain.errors import DataError, where
from toolchain.ranking import RankingColumns, group_by_query, read_judgements
from toolchain.readers import read_conll, read_squad

DEFAULT_QA_SEQ_LEN = 384
DEFAULT_DOC_STRIDE = 128


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the evaluation needs to know of a model, whichever variant describes it."""

    task: str
    labels: tuple[str, ...]
    problem_type: str | None
    max_seq_len: int
    # rerank: the scoring rule (see server.core.manifest.Manifest); None where a backend does not say.
    score_activation: str | None = None
    relevant_label: str | None = None


@dataclass
class EvalSet:
    task: str
    path: Path
    sha256: str
    items: list[Any]  # one request input per example
    parameters: dict[str, Any]
    score: Callable[[list[Any]], dict[str, float]]  # the answers, in item order -> metrics
    metric: str  # the primary metric, the one the gate compares

    def __len__(self) -> int:
        return len(self.items)


def sha256_of(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _classify(path: Path, info: ModelInfo, columns: Columns, separator: str) -> EvalSet:
    problem_type = info.problem_type or ("regression" if len(info.labels) == 1 else "single_label_classification")
    space = LabelSpace(problem_type, list(info.labels))
    examples, _ = read_examples(path, columns, space, separator=separator)
    # A missing or empty pair is a single text, as the server and the pipeline read it.
    items = [{"text": e.text, "text_pair": e.pair} if e.pair else e.text for e in examples]
    function = {"regression": "none", "multi_label_classification": "sigmoid"}.get(problem_type, "softmax")
    names = list(info.labels)

    def score(answers: list[Any]) -> dict[str, float]:
        predicted: list[Any] = []
        for ranked in answers:
            if problem_type == "regression":
                predicted.append(float(ranked[0]["score"]))
            elif problem_type == "multi_label_classification":
                predicted.append(sorted(names.index(e["label"]) for e in ranked if e["score"] > 0.5))
            else:
                predicted.append(names.index(ranked[0]["label"]))
        return metrics.classification_metrics(predicted, [e.label for e in examples], problem_type, len(names))

    return EvalSet(
        "classify",
        path,
        sha256_of(path),
        items,
        {"top_k": None, "function_to_apply": function},
        score,
        metrics.primary_metric("classify", problem_type),
    )


def qa_parameters(max_seq_len: int, handle_impossible_answer: bool, max_answer_len: int) -> dict[str, Any]:
    """The pipeline's parameters, pinned so that every variant decodes exactly alike."""
    length = min(DEFAULT_QA_SEQ_LEN, max_seq_len)
    return {
        "top_k": 1,
        "max_seq_len": length,
        "doc_stride": min(DEFAULT_DOC_STRIDE, length // 2),
        "max_answer_len": max_answer_len,
        "handle_impossible_answer": handle_impossible_answer,
    }


def _qa(path: Path, info: ModelInfo, impossible: bool | None, max_answer_len: int) -> EvalSet:
    examples, version = read_squad(path)
    if impossible is None:
        impossible = version.startswith("v2") or any(not e.answerable for e in examples)
    gold = {e.id: [a.text for a in e.answers] for e in examples}
    ids = [e.id for e in examples]

    def score(answers: list[Any]) -> dict[str, float]:
        return metrics.squad_metrics({qid: a["answer"] for qid, a in zip(ids, answers, strict=True)}, gold)

    return EvalSet(
        "qa",
        path,
        sha256_of(path),
        [{"question": e.question, "context": e.context} for e in examples],
        qa_parameters(info.max_seq_len, impossible, max_answer_len),
        score,
        "f1",
    )


def _tag(path: Path, info: ModelInfo) -> EvalSet:
    sentences = read_conll(path)
    known = set(info.labels)
    for sentence in sentences:
        for i, tag in enumerate(sentence.tags):
            if tag not in known:
                raise DataError(
                    f"{where(path, sentence.line + i)}: tag {tag!r} is not in the model's label set "
                    f"({', '.join(info.labels)})"
                )
    texts, starts = [], []
    for sentence in sentences:
        offsets, position = [], 0
        for token in sentence.tokens:
            offsets.append(position)
            position += len(token) + 1
        texts.append(" ".join(sentence.tokens))
        starts.append(offsets)

    def score(answers: list[Any]) -> dict[str, float]:
        predicted = []
        for offsets, tokens in zip(starts, answers, strict=True):
            first = {}
            for token in tokens:
                first.setdefault(token["start"], token["entity"])
            # A word the model never saw (cut off past its length) counts as untagged.
            predicted.append([first.get(start, "O") for start in offsets])
        return metrics.tagging_metrics(predicted, [s.tags for s in sentences])

    return EvalSet(
        "tag", path, sha256_of(path), texts, {"aggregation_strategy": "none", "ignore_labels": []}, score, "f1"
    )


def _rerank(path: Path, info: ModelInfo, columns: RankingColumns) -> EvalSet:
    groups = [g for g in group_by_query(read_judgements(path, columns)) if g.has_relevant]
    if not groups:
        raise DataError(f"{path}: no query has a relevant passage (relevance above 0): nothing to rank")

    def score(answers: list[Any]) -> dict[str, float]:
        return metrics.ranking_metrics([(s, g.relevances) for g, s in zip(groups, answers, strict=True)])

    return EvalSet(
        "rerank",
        path,
        sha256_of(path),
        [{"query": g.query, "documents": list(g.passages)} for g in groups],
        {"max_seq_len": info.max_seq_len},
        score,
        metrics.primary_metric("rerank"),
    )


def load(
    task: str,
    path: Path,
    info: ModelInfo,
    *,
    columns: Columns | None = None,
    label_separator: str = ",",
    impossible: bool | None = None,
    max_answer_len: int = 30,
    ranking: RankingColumns | None = None,
) -> EvalSet:
    if info.task != task:
        raise DataError(f"the model serves {info.task}, not {task}")
    if task == "classify":
        return _classify(Path(path), info, columns or Columns(), label_separator)
    if task == "qa":
        return _qa(Path(path), info, impossible, max_answer_len)
    if task == "tag":
        return _tag(Path(path), info)
    if task == "rerank":
        return _rerank(Path(path), info, ranking or RankingColumns())
    raise DataError(f"unknown task {task!r}: choose classify, qa, tag or rerank")
