"""electra-finetune: fine-tune an ELECTRA discriminator for classify, qa, tag or rerank on local files.

Exit codes: 0 done, 2 unusable data or options (one line on stderr), 1 any other failure
(the checkpoint, the training or the export).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from finetune.run import TASKS, FinetuneArgs, finetune
from finetune.train import TrainOptions
from toolchain.classification import PROBLEM_TYPES, Columns
from toolchain.errors import DataError, ExportError
from toolchain.ranking import RankingColumns

PROG = "electra-finetune"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Fine-tune an ELECTRA discriminator checkpoint (hub id or directory; PyTorch, TensorFlow or Flax "
            "weights) for classification, question answering, tagging or reranking (a cross-encoder), into a "
            "checkpoint directory that electra-export takes unchanged."
        ),
    )
    parser.add_argument(
        "--task",
        required=True,
        choices=TASKS,
        help="classify (CSV/TSV/JSON lines), qa (SQuAD JSON), tag (CoNLL), rerank (CSV/TSV/JSON lines of "
        "query, passage, relevance)",
    )
    parser.add_argument("--model", required=True, help="the checkpoint to start from: hub id or directory")
    parser.add_argument("--revision", help="hub revision of --model")
    parser.add_argument("--train-file", required=True, type=Path)
    parser.add_argument("--validation-file", type=Path, help="scored after every epoch (or --eval-steps)")
    parser.add_argument("--output", required=True, type=Path, help="the checkpoint directory to write")
    data = parser.add_argument_group("data (classify)")
    data.add_argument("--text-column", default="text", help="default: text")
    data.add_argument("--text-pair-column", help="second text of a pair (GLUE: sentence2)")
    data.add_argument(
        "--label-column", default="label", help="label names or ids (rerank: the relevance); default: label"
    )
    data.add_argument("--labels", help="comma list fixing the label set and its order (classify, tag)")
    data.add_argument(
        "--problem-type", default="auto", choices=("auto", *PROBLEM_TYPES), help="default: detected from the labels"
    )
    data.add_argument("--label-separator", default=",", help="between the labels of a multi-label cell (CSV/TSV)")
    ranking = parser.add_argument_group(
        "data (rerank)",
        "(query, passage, relevance) rows, the relevance 0/1 or a grade (0-3...): a one-logit cross-encoder is "
        "trained with binary cross-entropy on the relevance divided by the top grade (0/1 labels as they are), "
        "saved as a sentence-transformers CrossEncoder with a sigmoid activation (electra-export: rerank). "
        "Validation: nDCG@10 (the best checkpoint's), MRR@10 and MAP of each query's passages.",
    )
    ranking.add_argument("--query-column", default="query", help="default: query")
    ranking.add_argument("--passage-column", default="passage", help="default: passage")
    lengths = parser.add_argument_group("lengths")
    lengths.add_argument("--max-seq-len", type=int, help="tokens per row (default: the model's; qa: 384)")
    lengths.add_argument("--doc-stride", type=int, help="qa: context tokens shared by windows (default 128)")
    lengths.add_argument("--max-answer-len", type=int, default=30, help="qa: longest answer scored, in tokens")
    knobs = parser.add_argument_group("training")
    knobs.add_argument("--epochs", type=float, default=3.0)
    knobs.add_argument("--max-steps", type=int, default=-1, help="> 0: stop after this many steps (overrides --epochs)")
    knobs.add_argument("--learning-rate", "--lr", type=float, default=5e-5)
    knobs.add_argument("--batch-size", type=int, default=16)
    knobs.add_argument("--eval-batch-size", type=int, default=32)
    knobs.add_argument("--warmup-ratio", type=float, default=0.1)
    knobs.add_argument("--weight-decay", type=float, default=0.01)
    knobs.add_argument("--gradient-accumulation-steps", type=int, default=1)
    knobs.add_argument("--seed", type=int, default=42)
    knobs.add_argument("--fp16", action="store_true", help="mixed precision (CUDA only; ignored on the CPU)")
    knobs.add_argument(
        "--early-stopping-patience", type=int, help="stop after this many evaluations without a better metric"
    )
    knobs.add_argument("--eval-strategy", default="epoch", choices=("epoch", "steps"))
    knobs.add_argument("--eval-steps", type=int, help="with --eval-strategy steps")
    knobs.add_argument("--logging-steps", type=int, default=50)
    knobs.add_argument("--deterministic", action="store_true", help="one thread, deterministic algorithms")
    after = parser.add_argument_group("export")
    after.add_argument("--export", type=Path, metavar="REPO", help="export the result into this model repository")
    after.add_argument("--export-name", help="model name in the repository (default: the output directory's name)")
    after.add_argument("--precision", default="fp32,fp16", help="variants to export (default: fp32,fp16)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    return parser


def _args(ns: argparse.Namespace) -> FinetuneArgs:
    options = TrainOptions(
        epochs=ns.epochs,
        max_steps=ns.max_steps,
        learning_rate=ns.learning_rate,
        batch_size=ns.batch_size,
        eval_batch_size=ns.eval_batch_size,
        warmup_ratio=ns.warmup_ratio,
        weight_decay=ns.weight_decay,
        gradient_accumulation_steps=ns.gradient_accumulation_steps,
        seed=ns.seed,
        fp16=ns.fp16,
        early_stopping_patience=ns.early_stopping_patience,
        eval_strategy=ns.eval_strategy,
        eval_steps=ns.eval_steps,
        logging_steps=ns.logging_steps,
        quiet=ns.quiet,
        deterministic=ns.deterministic,
    )
    return FinetuneArgs(
        task=ns.task,
        model=ns.model,
        revision=ns.revision,
        train_file=ns.train_file,
        validation_file=ns.validation_file,
        output=ns.output,
        columns=Columns(ns.text_column, ns.text_pair_column, ns.label_column),
        ranking=RankingColumns(ns.query_column, ns.passage_column, ns.label_column),
        labels=[label.strip() for label in ns.labels.split(",")] if ns.labels else None,
        problem_type=ns.problem_type,
        label_separator=ns.label_separator,
        max_seq_len=ns.max_seq_len,
        doc_stride=ns.doc_stride,
        max_answer_len=ns.max_answer_len,
        options=options,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.early_stopping_patience is not None and ns.validation_file is None:
        parser.error("--early-stopping-patience needs --validation-file")
    if ns.deterministic:
        import torch  # heavy: --help never loads it

        torch.set_num_threads(1)
    try:
        if ns.export is not None:
            # The exporter (onnxruntime, onnx) loads only for --export: --help and a plain fine-tuning never do.
            from evaluation.export_hook import EvalRequest
            from export.exporter import default_name, export_checkpoint, parse_precisions

            precisions = parse_precisions(ns.precision)  # a typo fails now, not after the training
        result = finetune(_args(ns))
        for name, value in sorted(result.metrics.items()):
            if name in ("loss", "runtime", "samples_per_second", "steps_per_second", "epoch"):
                continue
            print(f"validation {name}: {value:.2f}")
        print(f"checkpoint: {result.output}")
        if ns.export is not None:
            # The validation file scores every exported variant into the manifest.
            evaluation = (
                EvalRequest(
                    ns.validation_file,
                    _args(ns).columns,
                    ns.label_separator,
                    max_answer_len=ns.max_answer_len,
                    ranking=_args(ns).ranking,
                )
                if ns.validation_file
                else None
            )
            manifest, warnings = export_checkpoint(
                str(result.output),
                ns.export,
                name=ns.export_name or default_name(str(result.output)),
                precisions=precisions,
                quiet=ns.quiet,
                evaluation=evaluation,
            )
            for warning in warnings:
                print(f"warning: {warning}", file=sys.stderr)
            print(f"exported: {ns.export / manifest.name} ({', '.join(manifest.variants)})")
            if manifest.evaluation is not None:
                recorded = manifest.evaluation
                scores = ", ".join(f"{v} {s[recorded.metric]:.2f}" for v, s in recorded.scores.items())
                print(f"evaluation ({recorded.metric} on {recorded.data_file}): {scores}")
        return 0
    except DataError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except ExportError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
