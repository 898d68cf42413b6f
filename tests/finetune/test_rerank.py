"""Reranking: the metrics against values computed by hand, the synthetic (query, passage, relevance)
set, and fine-tune -> export -> evaluate for a few steps: the checkpoint is a sigmoid CrossEncoder
that electra-export takes for a reranker, and electra-eval scores PyTorch, the ONNX variants and a
served model side by side: through the REST seam answered by a stand-in, and a running
electra-serve over REST (POST /v1/rerank) and gRPC (Rerank)."""

from __future__ import annotations

import json
import math
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from evaluation import data
from evaluation.__main__ import main as eval_main
from evaluation.backends import BackendError, OnnxBackend, RestBackend, rest_rerank
from evaluation.run import check_same_model, evaluate
from finetune import synthetic
from finetune.__main__ import main as finetune_main
from server.core.manifest import Manifest
from tests.e2e.conftest import ServerProcess, start_server
from toolchain import checkpoint as ckpt
from toolchain.metrics import average_precision, ndcg, primary_metric, ranking_metrics, reciprocal_rank
from toolchain.ranking import SIGMOID_FN, RankingColumns, rerank_scores

# ------------------------------------------------------------------ metrics


def test_ranking_metrics_by_hand() -> None:
    # Query A, ranked by score: relevances 0, 2, 1, 1 (the top-scored passage is not relevant).
    #   RR = 1/2; AP = (1/2 + 2/3 + 3/4) / 3; nDCG = (2/log2 3 + 1/log2 4 + 1/log2 5) / (2 + 1/log2 3 + 1/log2 4).
    # Query B, ranked: relevances 1, 0: RR = AP = nDCG = 1. Query C has no relevant passage: left out.
    queries = [
        ([0.1, 0.9, 0.7, 0.8], [1, 0, 1, 2]),
        ([0.5, 0.2], [1, 0]),
        ([0.3, 0.6], [0, 0]),
    ]
    ap_a = (1 / 2 + 2 / 3 + 3 / 4) / 3
    ndcg_a = (2 / math.log2(3) + 1 / math.log2(4) + 1 / math.log2(5)) / (2 + 1 / math.log2(3) + 1 / math.log2(4))
    scores = ranking_metrics(queries)
    assert scores == pytest.approx(
        {"mrr@10": 100 * (1 / 2 + 1) / 2, "ndcg@10": 100 * (ndcg_a + 1) / 2, "map": 100 * (ap_a + 1) / 2}, abs=1e-4
    )
    assert primary_metric("rerank") == "ndcg@10"


def test_the_cutoff_and_ties() -> None:
    # The only relevant passage ranked 11th: outside MRR@10 and nDCG@10, inside MAP (1/11).
    ranked = [0.0] * 10 + [1.0, 0.0]
    assert reciprocal_rank(ranked) == 0.0 and ndcg(ranked) == 0.0 and average_precision(ranked) == pytest.approx(1 / 11)
    assert reciprocal_rank(ranked, k=11) == pytest.approx(1 / 11)
    # Equal scores rank the relevant passage last, whatever the file's order: no credit for a constant model.
    assert ranking_metrics([([0.5, 0.5, 0.5], [2, 0, 0])]) == pytest.approx(
        {"mrr@10": 100 / 3, "ndcg@10": 100 * (2 / math.log2(4)) / 2, "map": 100 / 3}, abs=1e-4
    )
    with pytest.raises(ValueError, match="no query has a relevant"):
        ranking_metrics([([0.1, 0.2], [0, 0])])


def test_ndcg_and_ap_agree_with_scikit_learn_without_ties() -> None:
    from sklearn.metrics import average_precision_score, ndcg_score

    rng = random.Random(5)
    for _ in range(20):
        n = rng.randint(2, 25)
        relevances = [rng.choice([0, 0, 1, 2, 3]) for _ in range(n)]
        relevances[rng.randrange(n)] = 3
        scores = [rng.random() for _ in range(n)]
        got = ranking_metrics([(scores, relevances)])
        assert got["ndcg@10"] == pytest.approx(100 * ndcg_score([relevances], [scores], k=10), abs=1e-3)
        binary = [int(r > 0) for r in relevances]
        assert got["map"] == pytest.approx(100 * average_precision_score(binary, scores), abs=1e-3)


def test_the_serving_rule() -> None:
    logits = np.array([[0.0], [2.0], [-1.0]])
    assert rerank_scores(logits, "sigmoid") == pytest.approx([0.5, 1 / (1 + math.exp(-2)), 1 / (1 + math.e)])
    assert rerank_scores(logits, "identity") == pytest.approx([0.0, 2.0, -1.0])
    two = np.array([[1.0, 3.0], [800.0, -800.0]])
    softmax = np.exp(two[0]) / np.exp(two[0]).sum()
    assert rerank_scores(two, "softmax", 1) == pytest.approx([softmax[1], 0.0])
    assert rerank_scores(two, "softmax", 0) == pytest.approx([softmax[0], 1.0])
    with pytest.raises(ValueError):
        rerank_scores(two, "sigmoid")


# ------------------------------------------------------------------ the synthetic set


def test_synthetic_ranking_is_grouped_graded_and_learnable_in_words() -> None:
    rows = synthetic.ranking(40, seed=3, passages=6)
    assert rows == synthetic.ranking(40, seed=3, passages=6)
    assert len(rows) == 240 and set(rows[0]) == {"query", "passage", "label"}
    queries = [row["query"] for row in rows]
    assert len(set(queries)) == 40
    things = [t.lower().removeprefix("the ").removeprefix("a ") for t in synthetic.THINGS]
    for start in range(0, len(rows), 6):  # each query's rows together
        group = rows[start : start + 6]
        assert len({row["query"] for row in group}) == 1
        labels = sorted(row["label"] for row in group)
        assert labels.count(1) == 2 and labels.count(2) in (1, 2) and labels[0] == 0

        # The query names a thing and a place; the label counts how many of them the passage names.
        def names(text: str, name: str) -> bool:
            return f" {name} " in " " + " ".join(re.findall(r"\w+", text.lower())) + " "

        query = group[0]["query"]
        [place] = [p.lower() for p in synthetic.PLACES if names(query, p.lower())]
        [thing] = [t for t in things if names(query, t)]
        for row in group:
            assert names(row["passage"], thing) + names(row["passage"], place) == row["label"], (query, row)
    binary = synthetic.ranking(40, seed=3, passages=6, graded=False)
    assert [r["label"] for r in binary] == [int(r["label"] == 2) for r in rows]


# ------------------------------------------------------------------ fine-tune -> export -> evaluate


def _renamed(rows: list[dict]) -> list[dict]:
    return [{"q": r["query"], "doc": r["passage"], "grade": r["label"]} for r in rows]


@pytest.fixture(scope="module")
def rerank_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Training (JSON lines) and validation (TSV) files with other column names than the defaults."""
    root = tmp_path_factory.mktemp("rerank-data")
    return {
        "train": synthetic.write_table(root / "train.jsonl", _renamed(synthetic.ranking(48, seed=51))),
        "validation": synthetic.write_table(root / "validation.tsv", _renamed(synthetic.ranking(12, seed=52))),
    }


COLUMNS = ["--query-column", "q", "--passage-column", "doc", "--label-column", "grade"]


@pytest.fixture(scope="module")
def trained(base_checkpoint: Path, rerank_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """(checkpoint, repository): a few steps of electra-finetune --task rerank, exported with --export."""
    root = tmp_path_factory.mktemp("rerank-run")
    checkpoint, repository = root / "checkpoint", root / "repository"
    code = finetune_main(
        ["--task", "rerank", "--model", str(base_checkpoint), "--train-file", str(rerank_files["train"]),
         "--validation-file", str(rerank_files["validation"]), *COLUMNS, "--output", str(checkpoint),
         "--max-steps", "12", "--batch-size", "16", "--learning-rate", "1e-3", "--seed", "3", "--quiet",
         "--export", str(repository), "--export-name", "ft-rerank", "--precision", "fp32,fp16"]
    )  # fmt: skip
    assert code == 0
    return checkpoint, repository


def test_the_finetuned_checkpoint_is_a_sigmoid_cross_encoder(trained):
    from sentence_transformers import CrossEncoder

    checkpoint, repository = trained
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["id2label"] == {"0": "LABEL_0"}  # one logit
    assert config["sentence_transformers"] == {"activation_fn": SIGMOID_FN}
    assert config.get("problem_type") is None and config["architectures"] == ["ElectraForSequenceClassification"]
    record = json.loads((checkpoint / "finetune.json").read_text())
    assert record["task"] == "rerank" and record["metric"] == "ndcg@10" and record["relevance_scale"] == 2.0
    assert {"ndcg@10", "mrr@10", "map"} <= set(record["metrics"])
    resolved = ckpt.resolve(str(checkpoint))
    assert (resolved.task, resolved.score_activation) == ("rerank", "sigmoid")
    assert type(CrossEncoder(str(checkpoint), device="cpu").activation_fn).__name__ == "Sigmoid"

    manifest = Manifest.read(repository / "ft-rerank")
    assert (manifest.task, manifest.score_activation, manifest.relevant_label) == ("rerank", "sigmoid", None)
    assert manifest.evaluation is not None and manifest.evaluation.metric == "ndcg@10"
    assert set(manifest.evaluation.scores) == {"pytorch", "fp32", "fp16"}
    # The Trainer's validation and the export's PyTorch reference rank the same scores alike.
    assert manifest.evaluation.scores["pytorch"]["ndcg@10"] == pytest.approx(record["metrics"]["ndcg@10"], abs=1e-6)


def test_eval_prints_the_table_for_pytorch_and_each_variant(trained, rerank_files, tmp_path, capsys):
    checkpoint, repository = trained
    out = tmp_path / "eval.json"
    code = eval_main(
        ["--task", "rerank", "--data", str(rerank_files["validation"]), *COLUMNS, "--checkpoint", str(checkpoint),
         "--model-dir", str(repository / "ft-rerank"), "--json", str(out), "--batch-size", "7"]
    )  # fmt: skip
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert code == (0 if report["passed"] else 1)
    assert report["metric"] == "ndcg@10" and report["reference"] == "pytorch" and report["examples"] == 12
    assert set(report["variants"]) == {"pytorch", "fp32", "fp16"}
    lines = printed.splitlines()
    assert lines[0].startswith(f"rerank on {rerank_files['validation']} (12 examples")
    assert lines[1].split()[:4] == ["variant", "ndcg@10", "mrr@10", "map"]
    assert [line.split()[0] for line in lines[2:]] == ["pytorch", "fp32", "fp16"]
    variants = report["variants"]
    assert abs(variants["fp32"]["ndcg@10"] - variants["pytorch"]["ndcg@10"]) <= 0.5
    # The same scores the export recorded in the manifest, from the same file.
    recorded = Manifest.read(repository / "ft-rerank").evaluation
    assert recorded is not None and recorded.data_sha256 == report["data_sha256"]
    assert recorded.scores["pytorch"] == variants["pytorch"] and recorded.scores["fp32"] == variants["fp32"]


def _stand_in_server(model_dir: Path, requests: list[dict]) -> httpx.MockTransport:
    """What electra-eval expects of a served reranker: /v1/models describing it, and POST /v1/rerank
    answering the documents' scores (here the offline fp32 variant's), best first."""
    backend = OnnxBackend(model_dir, "fp32")
    manifest = Manifest.read(model_dir)

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            described = {"name": "rr", "task": "rerank", "labels": manifest.labels, "max_seq_len": manifest.max_seq_len}
            return httpx.Response(200, json={"models": [{**described, "score_activation": "sigmoid"}]})
        body = json.loads(request.content)
        requests.append(body)
        [scores] = backend.predict([{"query": body["query"], "documents": body["documents"]}], {"max_seq_len": 512})
        results = [{"index": i, "relevance_score": s} for i, s in enumerate(scores)]
        return httpx.Response(200, json={"results": sorted(results, key=lambda r: -r["relevance_score"])})

    return httpx.MockTransport(handle)


def test_the_served_backend_through_the_rerank_seam(trained, rerank_files):
    _, repository = trained
    requests: list[dict] = []
    served = RestBackend("http://stand-in", "rr", transport=_stand_in_server(repository / "ft-rerank", requests))
    offline = OnnxBackend(repository / "ft-rerank", "fp32")
    info = check_same_model({"fp32": offline.info(), "server": served.info()})
    assert info.task == "rerank" and info.score_activation == "sigmoid"
    eval_set = data.load("rerank", rerank_files["validation"], info, ranking=RankingColumns("q", "doc", "grade"))
    result = evaluate([offline, served], eval_set)
    assert result.scores["server"].metrics == result.scores["fp32"].metrics
    assert len(requests) == 12 and set(requests[0]) == {"model", "query", "documents"}
    assert requests[0]["model"] == "rr" and requests[0]["documents"] == eval_set.items[0]["documents"]


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    _, repository = trained
    handle = start_server(repository, tmp_path_factory.mktemp("rerank-server") / "server.log")
    try:
        handle.wait_ready()
        yield handle
    finally:
        assert handle.stop() == 0, handle.log()[-2000:]


def test_a_running_server_ranks_as_the_offline_variant(trained, server, rerank_files, tmp_path):
    """electra-eval in its own process, as tests/finetune/test_end_to_end.py runs it (its gRPC backend
    loads stubs whose message names tritonclient's share)."""
    _, repository = trained
    out = tmp_path / "eval.json"
    printed = subprocess.run(
        [sys.executable, "-m", "evaluation", "--task", "rerank", "--data", str(rerank_files["validation"]), *COLUMNS,
         "--model-dir", str(repository / "ft-rerank"), "--precision", "fp32", "--url", server.url,
         "--grpc", server.grpc_target, "--model", "ft-rerank", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.exists(), printed.stderr[-3000:]
    report = json.loads(out.read_text())
    variants = report["variants"]
    assert set(variants) == {"fp32", "server", "server-grpc"} and report["reference"] == "fp32"
    assert variants["server-grpc"] == variants["server"]  # the same scores, over either protocol
    assert abs(variants["server"]["ndcg@10"] - variants["fp32"]["ndcg@10"]) <= 0.5, variants
    assert printed.returncode == (0 if report["passed"] else 1)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"results": [{"index": 0, "relevance_score": 0.5}]}, "1 results"),
        ({"results": [{"index": 1, "relevance_score": 0.5}, {"index": 1, "relevance_score": 0.1}]}, "indices"),
        ({"scores": [0.5, 0.1]}, "not a rerank answer"),
    ],
)
def test_a_bad_rerank_answer_is_a_backend_error(answer, message):
    answering = httpx.MockTransport(lambda request: httpx.Response(200, json=answer))
    client = httpx.Client(base_url="http://x", transport=answering)
    with pytest.raises(BackendError, match=message):
        rest_rerank(client, "m", "q", ["a", "b"])
    refused = httpx.Client(base_url="http://x", transport=httpx.MockTransport(lambda r: httpx.Response(404, text="no")))
    with pytest.raises(BackendError, match="HTTP 404"):
        rest_rerank(refused, "m", "q", ["a", "b"])


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"query": "q", "passage": "p", "label": -1}], "must be a finite number >= 0"),
        ([{"query": "q", "passage": "p", "label": "high"}], "is not a number"),
        ([{"query": "q", "passage": "p"}], "no column 'label'"),
        ([{"query": "q", "passage": "p", "label": 0}], "no relevant passage"),
        ([{"query": "", "passage": "p", "label": 1}], "empty query"),
    ],
    ids=["negative", "not-a-number", "no-label-column", "nothing-relevant", "empty-query"],
)
def test_unusable_rerank_data_fails_before_any_training(rows, message, base_checkpoint, tmp_path, capsys):
    train = synthetic.write_table(tmp_path / "train.jsonl", rows)
    code = finetune_main(
        ["--task", "rerank", "--model", str(base_checkpoint), "--train-file", str(train),
         "--output", str(tmp_path / "out"), "--quiet"]
    )  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_eval_refuses_a_file_without_any_relevant_passage(trained, tmp_path, capsys):
    _, repository = trained
    path = synthetic.write_table(tmp_path / "zero.csv", [{"query": "q", "passage": "p", "label": 0}])
    code = eval_main(["--task", "rerank", "--data", str(path), "--model-dir", str(repository / "ft-rerank")])
    assert code == 2 and "no query has a relevant passage" in capsys.readouterr().err
