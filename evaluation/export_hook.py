"""`electra-export --eval-file`: the exported variants scored on a labelled file before the model is
published, recorded in the manifest's `evaluation` (metric, file hash, scores per variant)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluation import data
from evaluation.backends import OnnxBackend, PyTorchBackend
from evaluation.run import DEFAULT_MAX_DROP, check_same_model, evaluate
from server.core.manifest import Evaluation
from toolchain.classification import Columns
from toolchain.errors import DataError
from toolchain.ranking import RankingColumns


@dataclass(frozen=True)
class EvalRequest:
    file: Path
    columns: Columns = field(default_factory=Columns)
    label_separator: str = ","
    impossible: bool | None = None
    max_answer_len: int = 30
    max_drop: float | None = None  # set: the export fails when a variant drops more
    ranking: RankingColumns = field(default_factory=RankingColumns)  # rerank's columns


def check_request(request: EvalRequest, task: str, labels: list[str], problem_type: str | None, max_seq_len: int):
    """Read the evaluation file against the model's task and labels before the (long) export: an
    unusable file fails at once (DataError)."""
    if task not in ("classify", "qa", "tag", "rerank"):
        raise DataError(f"--eval-file: no task metric for {task} models (classify, qa, tag or rerank)")
    info = data.ModelInfo(task, tuple(labels), problem_type, max_seq_len)
    data.load(
        task,
        request.file,
        info,
        columns=request.columns,
        label_separator=request.label_separator,
        impossible=request.impossible,
        max_answer_len=request.max_answer_len,
        ranking=request.ranking,
    )


def evaluate_export(
    model_dir: Path,
    manifest: Any,
    torch_model: Any,
    tokenizer: Any,
    request: EvalRequest,
    threads: int = 0,
) -> tuple[Any, list[str]]:
    """(the manifest's Evaluation, failures against request.max_drop) for the variants in `model_dir`,
    with the PyTorch model as the reference. Raises DataError for an unusable file."""
    backends: list[Any] = [
        PyTorchBackend(
            torch_model,
            tokenizer,
            manifest.task,
            score_activation=manifest.score_activation,
            relevant_label=manifest.relevant_label,
        )
    ]
    backends += [OnnxBackend(model_dir, p, threads=threads, manifest=manifest) for p in manifest.variants]
    info = check_same_model({b.name: b.info() for b in backends})
    eval_set = data.load(
        manifest.task,
        request.file,
        info,
        columns=request.columns,
        label_separator=request.label_separator,
        impossible=request.impossible,
        max_answer_len=request.max_answer_len,
        ranking=request.ranking,
    )
    max_drop = DEFAULT_MAX_DROP if request.max_drop is None else request.max_drop
    result = evaluate(backends, eval_set, max_drop)
    recorded = Evaluation(
        metric=result.metric,
        data_file=Path(request.file).name,
        data_sha256=eval_set.sha256,
        examples=len(eval_set),
        scores={name: score.metrics for name, score in result.scores.items()},
        parameters=eval_set.parameters,
        reference=result.reference,
    )
    return recorded, result.failures() if request.max_drop is not None else []
