"""electra-export: Hugging Face ELECTRA checkpoint -> model repository (see docs/REFERENCE.md §1.3, §2)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from toolchain.classification import Columns
from toolchain.errors import DataError, ExportError
from toolchain.ranking import RankingColumns


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="electra-export",
        description="Export an ELECTRA checkpoint to fp32/fp16/int8 ONNX graphs with a parity gate against PyTorch.",
    )
    parser.add_argument("--model", help="Hugging Face model id or local checkpoint directory")
    parser.add_argument("--output", required=True, type=Path, help="model repository directory to write into")
    parser.add_argument("--name", help="model name in the repository (default: derived from --model)")
    parser.add_argument(
        "--task",
        default="auto",
        help="auto|discriminate|classify|qa|tag|rerank (default: auto, from the architecture; a one-logit sequence "
        "classifier that sentence-transformers saved as a CrossEncoder is rerank, any other stays classify)",
    )
    parser.add_argument(
        "--precision", help="comma list of fp32,fp16,int8 (default: fp32,fp16; --demo: all three; --prune: required)"
    )
    parser.add_argument("--max-seq-len", type=int, help="default: the model's max_position_embeddings")
    parser.add_argument("--revision", help="hub revision (branch, tag or commit) for a model id")
    parser.add_argument("--demo", action="store_true", help="write the four embedded demo models, offline")
    parser.add_argument(
        "--prune",
        action="store_true",
        help="keep only the --precision variants of every model already in --output (files and manifest entries)",
    )
    rerank = parser.add_argument_group(
        "rerank (a cross-encoder)",
        "One logit: the score is sigmoid(logit) or the logit itself, as the checkpoint's CrossEncoder activation "
        "says (config_sentence_transformers.json, or config.json's sentence_transformers.activation_fn or "
        "sbert_ce_default_activation_function), sigmoid when it says none (CrossEncoder's default). Two logits: "
        "the softmax probability of the relevant label.",
    )
    rerank.add_argument(
        "--relevant-label",
        metavar="NAME",
        help="two logits: the label (name, or index) whose probability is the score; default: the label named "
        "'relevant' (any case) if there is one, else label 1 (the positive class of 0/1 training labels)",
    )
    rerank.add_argument(
        "--score-activation",
        choices=("sigmoid", "identity", "softmax"),
        help="override the checkpoint's: sigmoid or identity for one logit; softmax (the only choice) for two",
    )
    evaluation = parser.add_argument_group("evaluation (classify, qa, tag, rerank)")
    evaluation.add_argument(
        "--eval-file", type=Path, help="score every variant on this labelled file and record it in the manifest"
    )
    evaluation.add_argument("--text-column", default="text", help="classify: default text")
    evaluation.add_argument("--text-pair-column", help="classify: second text of a pair")
    evaluation.add_argument(
        "--label-column", default="label", help="classify: label names or ids; rerank: the relevance; default label"
    )
    evaluation.add_argument("--query-column", default="query", help="rerank: default query")
    evaluation.add_argument("--passage-column", default="passage", help="rerank: default passage")
    evaluation.add_argument("--label-separator", default=",", help="classify: between multi-label labels")
    evaluation.add_argument(
        "--eval-max-drop", type=float, help="fail the export when a variant falls this many points below PyTorch"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # The exporter (onnxruntime, onnx), the pruner and the demo builder are imported by the branch
        # that runs them, once the arguments are parsed: --help stays instant.
        if args.prune:
            from export.exporter import parse_precisions
            from export.prune import prune_repository

            if args.precision is None or args.model or args.demo:
                raise ExportError("--prune takes --output and --precision only")
            for line in prune_repository(args.output, parse_precisions(args.precision)):
                print(line)
            return 0
        if args.demo and args.precision:
            raise ExportError("--demo writes fp32, fp16 and int8; keep fewer afterwards with --prune --precision")
        if args.demo:
            from export.demo import write_demo_repository

            for manifest in write_demo_repository(args.output, quiet=args.quiet):
                print(f"{manifest.name}: {manifest.task}, variants {', '.join(manifest.variants)}")
            return 0
        if not args.model:
            raise ExportError("--model is required (or --demo)")
        from evaluation.export_hook import EvalRequest  # the exporter imports it: loaded with it
        from export.exporter import export_checkpoint, parse_precisions

        evaluation = None
        if args.eval_file is not None:
            evaluation = EvalRequest(
                args.eval_file,
                Columns(args.text_column, args.text_pair_column, args.label_column),
                args.label_separator,
                max_drop=args.eval_max_drop,
                ranking=RankingColumns(args.query_column, args.passage_column, args.label_column),
            )
        manifest, warnings = export_checkpoint(
            args.model,
            args.output,
            name=args.name,
            task=args.task,
            precisions=parse_precisions(args.precision or "fp32,fp16"),
            max_seq_len=args.max_seq_len,
            revision=args.revision,
            quiet=args.quiet,
            evaluation=evaluation,
            relevant_label=args.relevant_label,
            score_activation=args.score_activation,
        )
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if manifest.task == "rerank":
            rule = manifest.score_activation + (f" of {manifest.relevant_label}" if manifest.relevant_label else "")
            print(f"{manifest.name}: rerank, score {rule}")
        for precision, variant in manifest.variants.items():
            print(
                f"{manifest.name} {precision}: {variant.file} max_abs_error={variant.parity.max_abs_error:.3g} "
                f"top1_agreement={variant.parity.top1_agreement:.4f}"
            )
        if manifest.evaluation is not None:
            recorded = manifest.evaluation
            for variant, scores in recorded.scores.items():
                score = scores[recorded.metric]
                print(f"{manifest.name} {variant}: {recorded.metric}={score:.2f} on {recorded.data_file}")
        return 0
    except ExportError as exc:
        print(f"electra-export: error: {exc}", file=sys.stderr)
        return 1
    except DataError as exc:  # an unusable --eval-file
        print(f"electra-export: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
