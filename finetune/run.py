"""One fine-tuning run, from files to a checkpoint directory: read and check the data (before any
model loads), tokenize it for the task, load the starting checkpoint with the task's head, train,
save, and optionally export."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from finetune import classify, discriminate, qa, rerank, tag
from finetune.model import base_checkpoint, base_label_names, load_model
from finetune.train import TrainOptions, train
from toolchain.checkpoint import load_tokenizer
from toolchain.classification import Columns, LabelSpace, read_examples
from toolchain.errors import DataError
from toolchain.metrics import classification_metrics, primary_metric
from toolchain.ranking import RankingColumns, group_by_query, read_judgements, target_scale
from toolchain.readers import read_squad

TASKS = ("classify", "qa", "tag", "rerank")
DEFAULT_QA_SEQ_LEN = 384
DEFAULT_DOC_STRIDE = 128


@dataclass
class FinetuneArgs:
    task: str  # classify | qa | tag | rerank (discriminate: replaced-token detection, used to build the demo)
    model: str
    train_file: Path
    output: Path
    validation_file: Path | None = None
    columns: Columns = field(default_factory=Columns)
    ranking: RankingColumns = field(default_factory=RankingColumns)  # rerank's columns
    labels: list[str] | None = None
    problem_type: str = "auto"
    label_separator: str = ","
    max_seq_len: int | None = None
    doc_stride: int | None = None
    max_answer_len: int = 30
    revision: str | None = None
    options: TrainOptions = field(default_factory=TrainOptions)
    config_updates: dict[str, Any] = field(default_factory=dict)  # e.g. dropout, for the demo models


@dataclass
class FinetuneResult:
    output: Path
    task: str
    train_examples: int
    validation_examples: int
    labels: list[str]
    metric: str | None
    metrics: dict[str, float]


@dataclass
class _Prepared:
    label_config: dict[str, Any] | None
    labels: list[str]
    train_rows: list[dict[str, Any]]
    validation_rows: list[dict[str, Any]] | None
    collator: Any
    compute_metrics: Any
    metric: str | None
    counts: tuple[int, int]
    compute_loss: Any = None  # the Trainer's compute_loss_func, when not the head's own loss
    record: dict[str, Any] = field(default_factory=dict)  # task details for finetune.json


def _read(args: FinetuneArgs, base_names: list[str] | None) -> tuple[Any, Any, Any]:
    """(train data, validation data, labels) for the task: DataError for anything unusable."""
    if args.task == "classify":
        options = {
            "problem_type": args.problem_type,
            "labels": args.labels,
            "base_names": base_names,
            "separator": args.label_separator,
        }
        train_set, space = read_examples(args.train_file, args.columns, **options)
        validation = None
        if args.validation_file:
            validation, _ = read_examples(args.validation_file, args.columns, space, separator=args.label_separator)
        return train_set, validation, space
    if args.task == "qa":
        train_set, version = read_squad(args.train_file)
        validation = read_squad(args.validation_file) if args.validation_file else None
        return train_set, validation, version
    if args.task == "tag":
        train_set, names = tag.read_sentences(args.train_file, labels=args.labels, base_names=base_names)
        validation = tag.read_sentences(args.validation_file, names)[0] if args.validation_file else None
        return train_set, validation, names
    if args.task == "rerank":
        train_set = read_judgements(args.train_file, args.ranking)
        validation = read_judgements(args.validation_file, args.ranking) if args.validation_file else None
        if validation is not None and not any(g.has_relevant for g in group_by_query(validation)):
            raise DataError(f"{args.validation_file}: no query has a relevant passage: nothing to rank")
        return train_set, validation, target_scale(args.train_file, train_set)
    if args.task == "discriminate":
        validation = discriminate.read_sentences(args.validation_file) if args.validation_file else None
        return discriminate.read_sentences(args.train_file), validation, list(discriminate.TAGS)
    raise DataError(f"unknown task {args.task!r}: choose one of {', '.join(TASKS)}")


def _prepare(args: FinetuneArgs, tokenizer: Any, max_positions: int, base_names: list[str] | None) -> _Prepared:
    # transformers (torch with it) loads when a run starts, not with this module (electra-finetune --help).
    from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

    train_set, validation, labels = _read(args, base_names)
    max_len = min(args.max_seq_len or max_positions, max_positions)
    if args.task == "classify":
        space: LabelSpace = labels
        rows = classify.features(train_set, tokenizer, max_len, space)
        val_rows = classify.features(validation, tokenizer, max_len, space) if validation else None
        return _Prepared(
            space.config(),
            space.names,
            rows,
            val_rows,
            DataCollatorWithPadding(tokenizer),
            classification_metric_function(space),
            primary_metric("classify", space.problem_type),
            (len(train_set), len(validation or [])),
        )
    if args.task == "qa":
        max_len = min(args.max_seq_len or DEFAULT_QA_SEQ_LEN, max_positions)
        stride = args.doc_stride if args.doc_stride is not None else min(DEFAULT_DOC_STRIDE, max_len // 2)
        found = qa.windows(train_set, tokenizer, max_len, stride, str(args.train_file))
        val_rows = metric = None
        if validation:
            val_examples, val_version = validation
            allow_empty = val_version.startswith("v2") or any(not e.answerable for e in val_examples + train_set)
            val_found = qa.windows(val_examples, tokenizer, max_len, stride, str(args.validation_file))
            val_rows, metric = (
                val_found.rows,
                qa.metric_function(val_examples, val_found, args.max_answer_len, allow_empty),
            )
        return _Prepared(
            None,
            [],
            found.rows,
            val_rows,
            DataCollatorWithPadding(tokenizer),
            metric,
            "f1",
            (len(train_set), len(validation[0]) if validation else 0),
        )
    if args.task == "rerank":
        scale: float = labels
        return _Prepared(
            dict(rerank.LABEL_CONFIG),
            [],
            rerank.features(train_set, tokenizer, max_len, scale),
            rerank.features(validation, tokenizer, max_len, scale) if validation else None,
            DataCollatorWithPadding(tokenizer),
            rerank.metric_function(validation) if validation else None,
            primary_metric("rerank"),
            (len(train_set), len(validation or [])),
            rerank.bce_loss,
            {"relevance_scale": scale, "score_activation": "sigmoid"},
        )
    if args.task == "tag":
        names: list[str] = labels
        return _Prepared(
            {
                "num_labels": len(names),
                "id2label": dict(enumerate(names)),
                "label2id": {n: i for i, n in enumerate(names)},
            },
            names,
            tag.features(train_set, tokenizer, max_len, names),
            tag.features(validation, tokenizer, max_len, names) if validation else None,
            DataCollatorForTokenClassification(tokenizer),
            tag.metric_function(names),
            "f1",
            (len(train_set), len(validation or [])),
        )
    return _Prepared(
        None,
        [],
        discriminate.features(train_set, tokenizer, max_len),
        discriminate.features(validation, tokenizer, max_len) if validation else None,
        DataCollatorForTokenClassification(tokenizer),
        discriminate.metric_function(),
        "f1",
        (len(train_set), len(validation or [])),
    )


def classification_metric_function(space: LabelSpace):
    def compute(prediction: Any) -> dict[str, float]:
        logits = np.asarray(prediction.predictions)
        gold = np.asarray(prediction.label_ids)
        if space.problem_type == "regression":
            return classification_metrics(logits.reshape(-1).tolist(), gold.reshape(-1).tolist(), "regression", 1)
        if space.problem_type == "multi_label_classification":
            predicted = [np.flatnonzero(row > 0).tolist() for row in logits]
            references = [np.flatnonzero(row > 0.5).tolist() for row in gold]
            return classification_metrics(predicted, references, space.problem_type, space.num_labels)
        return classification_metrics(logits.argmax(-1).tolist(), gold.tolist(), space.problem_type, space.num_labels)

    return compute


def finetune(args: FinetuneArgs) -> FinetuneResult:
    """Raises DataError (bad data) or ExportError (bad checkpoint)."""
    from transformers import set_seed  # torch with it: see _prepare

    if args.task not in (*TASKS, "discriminate"):
        raise DataError(f"unknown task {args.task!r}: choose one of {', '.join(TASKS)}")
    quiet = args.options.quiet
    if quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # "You should probably TRAIN this model..." about the new head
    # The data first: a missing file is the first thing to say, before any model is looked for.
    for flag, file in (("--train-file", args.train_file), ("--validation-file", args.validation_file)):
        if file is not None and not Path(file).is_file():
            raise DataError(f"{flag} {file}: no such file")
    base = base_checkpoint(args.model, args.task, args.revision)
    prepared = _prepare(args, load_tokenizer(base), base.max_position_embeddings, base_label_names(base))
    train_count, validation_count = prepared.counts
    if not quiet:
        described = f", labels {', '.join(prepared.labels)}" if prepared.labels else ""
        print(
            f"[electra-finetune] {args.task}: {train_count} training examples ({len(prepared.train_rows)} rows), "
            f"{validation_count} validation examples{described}",
            file=sys.stderr,
        )
    # The new head's initial weights come from this seed too.
    set_seed(args.options.seed)
    model = load_model(base, prepared.label_config, **args.config_updates)
    metrics = train(
        model,
        load_tokenizer(base),
        prepared.train_rows,
        prepared.validation_rows,
        prepared.collator,
        prepared.compute_metrics,
        prepared.metric,
        args.options,
        args.output,
        prepared.compute_loss,
    )
    result = FinetuneResult(
        Path(args.output), args.task, train_count, validation_count, prepared.labels, prepared.metric, metrics
    )
    record = {
        "task": args.task,
        "base_model": args.model,
        "train_file": str(args.train_file),
        "validation_file": str(args.validation_file) if args.validation_file else None,
        "train_examples": train_count,
        "validation_examples": validation_count,
        "metric": prepared.metric,
        "metrics": metrics,
        "options": asdict(args.options),
        **prepared.record,
    }
    (Path(args.output) / "finetune.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return result
