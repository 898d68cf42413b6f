"""electra-eval: a model's task metric on a labelled file, as PyTorch fp32, each exported ONNX variant
(offline, through the server's own code) and a running server (over REST and/or gRPC) compute it,
side by side.

Exit codes: 0 every variant within --max-drop points of the reference, 1 one fell further,
2 unusable data or options (one line on stderr), 3 a model or server could not be evaluated.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from evaluation import data
from evaluation.backends import BackendError, GrpcBackend, OnnxBackend, PyTorchBackend, RestBackend
from evaluation.report import table
from evaluation.run import DEFAULT_MAX_DROP, check_same_model, evaluate
from server.core.manifest import PRECISIONS
from toolchain.classification import Columns
from toolchain.errors import DataError
from toolchain.ranking import RankingColumns

PROG = "electra-eval"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Score a model on a labelled file as PyTorch fp32 (--checkpoint), each exported ONNX variant offline "
            "(--model-dir) and a running electra-serve (--url and/or --grpc, with --model), side by side; exit 1 "
            "when a variant falls more than --max-drop points below the reference (PyTorch, else ONNX fp32)."
        ),
    )
    parser.add_argument("--task", required=True, choices=("classify", "qa", "tag", "rerank"))
    parser.add_argument(
        "--data",
        required=True,
        type=Path,
        help="labelled file: CSV/TSV/JSON lines (classify; rerank: query, passage, relevance rows), SQuAD JSON, CoNLL",
    )
    parser.add_argument("--checkpoint", help="the fine-tuned checkpoint (directory or hub id): the PyTorch reference")
    parser.add_argument("--model-dir", type=Path, help="an exported model, REPO/NAME: each of its variants offline")
    parser.add_argument("--precision", help="comma list of the variants of --model-dir to score (default: all)")
    parser.add_argument("--url", help="a running electra-serve, e.g. http://127.0.0.1:8000")
    parser.add_argument(
        "--grpc",
        metavar="HOST:PORT",
        help="a running electra-serve's gRPC port, e.g. 127.0.0.1:8001: its typed API (plaintext, no API key)",
    )
    parser.add_argument("--model", help="the served model's name (with --url and/or --grpc)")
    parser.add_argument("--json", type=Path, metavar="OUT", help='write {"variants": {NAME: {metric: value}}, ...}')
    parser.add_argument("--max-drop", type=float, default=DEFAULT_MAX_DROP, help="points (default 0.5)")
    parser.add_argument("--batch-size", type=int, default=16, help="inputs per model call or request")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto, for the PyTorch and ONNX variants")
    columns = parser.add_argument_group("data (classify)")
    columns.add_argument("--text-column", default="text")
    columns.add_argument("--text-pair-column")
    columns.add_argument("--label-column", default="label", help="rerank: the relevance (0/1 or a grade)")
    columns.add_argument("--label-separator", default=",", help="between the labels of a multi-label cell")
    rerank = parser.add_argument_group(
        "rerank",
        "Rows grouped by query; scored with MRR@10, nDCG@10 (the gate's) and MAP, a passage relevant when its "
        "relevance is above 0. A server is asked one query at a time (POST /v1/rerank; gRPC Rerank).",
    )
    rerank.add_argument("--query-column", default="query", help="default: query")
    rerank.add_argument("--passage-column", default="passage", help="default: passage")
    rerank.add_argument(
        "--relevant-label",
        help="--checkpoint with two logits: the label whose probability is the score (as electra-export's flag)",
    )
    qa = parser.add_argument_group("qa")
    qa.add_argument(
        "--handle-impossible-answer",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="let the empty answer compete (default: when the data has unanswerable questions, SQuAD 2.0)",
    )
    qa.add_argument("--max-answer-len", type=int, default=30)
    return parser


def _backends(ns: argparse.Namespace, parser: argparse.ArgumentParser) -> list[Any]:
    if not (ns.checkpoint or ns.model_dir or ns.url or ns.grpc):
        parser.error("nothing to evaluate: give --checkpoint, --model-dir and/or --url / --grpc with --model")
    if bool(ns.url or ns.grpc) != bool(ns.model):
        parser.error("--model goes with --url and/or --grpc, and they with it")
    backends: list[Any] = []
    if ns.checkpoint:
        device = "cpu" if ns.device == "auto" else ns.device
        backends.append(PyTorchBackend.load(ns.checkpoint, ns.task, device, ns.relevant_label))
    if ns.model_dir:
        available = OnnxBackend.variants(ns.model_dir)
        wanted = available
        if ns.precision:
            wanted = [p.strip() for p in ns.precision.split(",") if p.strip()]
            unknown = [p for p in wanted if p not in PRECISIONS]
            if unknown:
                parser.error(f"unknown precision {', '.join(unknown)}: choose from {', '.join(PRECISIONS)}")
            absent = [p for p in wanted if p not in available]
            if absent:
                raise BackendError(f"{ns.model_dir} has no {', '.join(absent)} variant (it has {', '.join(available)})")
        from server.core.device import select_device

        device = select_device(ns.device)
        backends.extend(OnnxBackend(ns.model_dir, precision, device) for precision in wanted)
    if ns.url:
        backends.append(RestBackend(ns.url, ns.model))
    if ns.grpc:
        backends.append(GrpcBackend(ns.grpc, ns.model))
    return backends


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        backends = _backends(ns, parser)
        try:
            info = check_same_model({b.name: b.info() for b in backends})
        except ValueError as exc:
            raise BackendError(str(exc)) from exc
        eval_set = data.load(
            ns.task,
            ns.data,
            info,
            columns=Columns(ns.text_column, ns.text_pair_column, ns.label_column),
            label_separator=ns.label_separator,
            impossible=ns.handle_impossible_answer,
            max_answer_len=ns.max_answer_len,
            ranking=RankingColumns(ns.query_column, ns.passage_column, ns.label_column),
        )
        result = evaluate(backends, eval_set, ns.max_drop, ns.batch_size)
    except DataError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except BackendError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 3
    print(table(result))
    if ns.json:
        ns.json.write_text(json.dumps(result.as_json(), indent=2) + "\n")
    failures = result.failures()
    for failure in failures:
        print(f"{PROG}: FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
