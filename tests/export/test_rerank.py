"""The rerank export: which checkpoints are cross-encoders (sentence-transformers' marks, version by
version), the manifest's scoring rule, and the exported graph's scores against
`sentence_transformers.CrossEncoder(checkpoint).predict` (the oracle), through the manifest's rule
and through electra-eval's offline ONNX backend."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from export.__main__ import main as export_main
from export.exporter import export_checkpoint
from server.core.manifest import INPUT_NAMES, Manifest
from toolchain import checkpoint as ckpt
from toolchain.errors import ExportError

SIGMOID = "torch.nn.modules.activation.Sigmoid"
IDENTITY = "torch.nn.modules.linear.Identity"

# Queries and documents the exporter's probes do not contain (short enough to need no truncation).
PAIRS = [
    ("who proposed electra?", "ELECTRA was proposed by Clark and others in 2020."),
    ("who proposed electra?", "The weather in Zürich was cold."),
    ("capital of japan", "東京は日本の首都です。"),
    ("capital of japan", "Tokyo is the capital of Japan 🗼"),
    ("", "an empty query"),
    ("a query with no document", ""),
    ("gradient descent", "Gradient descent with warm restarts converges on the validation plateau " * 3),
]


def _copy(source: Path, target: Path, config: dict | None = None, drop: tuple[str, ...] = (), **files) -> Path:
    """A copy of a checkpoint with config.json keys changed (None: removed) and JSON files added."""
    shutil.copytree(source, target)
    path = target / "config.json"
    data = json.loads(path.read_text())
    for key, value in (config or {}).items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    for key in drop:
        data.pop(key, None)
    path.write_text(json.dumps(data, indent=2))
    for name, content in files.items():
        (target / name.replace("__", ".")).write_text(json.dumps(content))
    return target


@pytest.fixture(scope="module")
def one_logit(make_checkpoint) -> Path:
    """A plain one-logit sequence classifier: no sentence-transformers mark (an STS-B regressor's shape)."""
    return make_checkpoint("classify", labels=["LABEL_0"], seed=31)


@pytest.fixture(scope="module")
def st5_cross_encoder(one_logit: Path, tmp_path_factory) -> Path:
    """A CrossEncoder with an Identity activation saved by the installed sentence-transformers (5.x:
    config_sentence_transformers.json and modules.json beside the transformers files)."""
    import torch
    from sentence_transformers import CrossEncoder

    target = tmp_path_factory.mktemp("st5") / "cross-encoder"
    CrossEncoder(str(one_logit), activation_fn=torch.nn.Identity()).save(str(target))
    return target


def test_a_cross_encoder_with_a_sigmoid_is_a_sigmoid_reranker(make_checkpoint):
    checkpoint = ckpt.resolve(str(make_checkpoint("rerank", seed=32)))  # config.json's sentence_transformers
    assert (checkpoint.task, checkpoint.score_activation, checkpoint.relevant_label) == ("rerank", "sigmoid", None)
    assert checkpoint.architecture == "ElectraForSequenceClassification"


def test_a_cross_encoder_with_identity_serves_its_logit(make_checkpoint):
    checkpoint = ckpt.resolve(str(make_checkpoint("rerank", seed=33, activation="identity")))
    assert (checkpoint.task, checkpoint.score_activation) == ("rerank", "identity")


def test_the_files_sentence_transformers_5_saves_are_read(st5_cross_encoder: Path):
    st_config = json.loads((st5_cross_encoder / "config_sentence_transformers.json").read_text())
    assert st_config["model_type"] == "CrossEncoder" and st_config["activation_fn"] == IDENTITY
    checkpoint = ckpt.resolve(str(st5_cross_encoder))
    assert (checkpoint.task, checkpoint.score_activation) == ("rerank", "identity")


@pytest.mark.parametrize(
    ("config", "files", "expected"),
    [
        # sentence-transformers 2.x / 3.x: written only when the CrossEncoder was given an activation.
        ({"sbert_ce_default_activation_function": IDENTITY}, {}, ("rerank", "identity")),
        ({"sbert_ce_default_activation_function": SIGMOID}, {}, ("rerank", "sigmoid")),
        # 4.x with no activation recorded: CrossEncoder's default for one logit.
        ({"sentence_transformers": {"version": "4.0.1"}}, {}, ("rerank", "sigmoid")),
        # 5.x: config_sentence_transformers.json wins over config.json, as CrossEncoder reads them.
        (
            {"sentence_transformers": {"activation_fn": SIGMOID}},
            {"config_sentence_transformers__json": {"model_type": "CrossEncoder", "activation_fn": IDENTITY}},
            ("rerank", "identity"),
        ),
        ({}, {"config_sentence_transformers__json": {"model_type": "CrossEncoder"}}, ("rerank", "sigmoid")),
        # No mark: a one-logit head stays a classifier (a regressor); a bi-encoder's file is no mark.
        ({}, {}, ("classify", None)),
        ({}, {"config_sentence_transformers__json": {"model_type": "SentenceTransformer"}}, ("classify", None)),
    ],
    ids=["st3-identity", "st3-sigmoid", "st4-default", "st5-file-first", "st5-default", "plain", "bi-encoder"],
)
def test_detection_by_sentence_transformers_version(config, files, expected, one_logit, tmp_path):
    checkpoint = ckpt.resolve(str(_copy(one_logit, tmp_path / "ck", config, **files)))
    assert (checkpoint.task, checkpoint.score_activation) == expected
    if checkpoint.task == "classify":
        assert ckpt.problem_type_of(checkpoint) == "regression"


def test_a_cross_encoder_scored_beyond_its_transformers_model_is_refused(st5_cross_encoder, tmp_path):
    modules = json.loads((st5_cross_encoder / "modules.json").read_text())
    extra = {"idx": 1, "name": "1", "path": "1_Dense", "type": "sentence_transformers.base.modules.Dense"}
    target = _copy(st5_cross_encoder, tmp_path / "ck", modules__json=[*modules, extra])
    with pytest.raises(ExportError, match="several modules"):
        ckpt.resolve(str(target))
    assert ckpt.resolve(str(target), "classify").task == "classify"  # as a plain classifier it is fine


def test_a_custom_activation_needs_naming(one_logit, tmp_path):
    target = _copy(one_logit, tmp_path / "ck", {"sentence_transformers": {"activation_fn": "mypackage.Scaled"}})
    with pytest.raises(ExportError, match="--score-activation"):
        ckpt.resolve(str(target))
    assert ckpt.resolve(str(target), score_activation="identity").score_activation == "identity"


@pytest.mark.parametrize(
    ("labels", "wanted", "relevant"),
    [
        (["not_relevant", "relevant"], None, "relevant"),
        (["Relevant", "irrelevant"], None, "Relevant"),
        (["LABEL_0", "LABEL_1"], None, "LABEL_1"),
        (["no", "yes"], None, "yes"),
        (["not_relevant", "relevant"], "not_relevant", "not_relevant"),
        (["no", "yes"], "0", "no"),
    ],
)
def test_two_logits_as_rerank_score_one_labels_probability(labels, wanted, relevant, make_checkpoint):
    checkpoint = make_checkpoint("classify", labels=labels, seed=34)
    assert ckpt.resolve(str(checkpoint)).task == "classify"  # two logits: a classifier unless asked
    resolved = ckpt.resolve(str(checkpoint), "rerank", relevant_label=wanted)
    assert (resolved.task, resolved.score_activation, resolved.relevant_label) == ("rerank", "softmax", relevant)


@pytest.mark.parametrize(
    ("make", "options", "message"),
    [
        (lambda mk: mk("classify", labels=["n", "p"], seed=34), {"relevant_label": "maybe"}, "not one of"),
        (lambda mk: mk("classify", labels=["a", "b", "c"], seed=5), {}, "has 3 labels"),
        (lambda mk: mk("classify", labels=["n", "p"], seed=34), {"score_activation": "sigmoid"}, "is softmax"),
        (lambda mk: mk("rerank", seed=32), {"relevant_label": "LABEL_0"}, "one logit"),
        (lambda mk: mk("rerank", seed=32), {"score_activation": "softmax"}, "sigmoid or identity"),
        (lambda mk: mk("qa", seed=8, num_hidden_layers=3), {}, "serves 'qa', not 'rerank'"),
        (lambda mk: mk("rerank", labels=["n", "p"], seed=35, activation="sigmoid"), {}, "--score-activation softmax"),
    ],
    ids=["unknown-label", "three-labels", "two-logits-sigmoid", "one-logit-label", "one-logit-softmax", "qa", "ce2"],
)
def test_rerank_options_that_cannot_apply_fail_clearly(make, options, message, make_checkpoint):
    with pytest.raises(ExportError, match=message):
        ckpt.resolve(str(make(make_checkpoint)), "rerank", **options)


def test_rerank_options_are_for_rerank_only(make_checkpoint):
    checkpoint = make_checkpoint("rerank", seed=32)
    assert ckpt.resolve(str(checkpoint), "classify").task == "classify"  # the same graph, as a classifier
    with pytest.raises(ExportError, match="are for rerank exports"):
        ckpt.resolve(str(checkpoint), "classify", relevant_label="LABEL_0")


# ------------------------------------------------------------------ the exported scores against CrossEncoder


def _onnx_logits(model_dir: Path, precision: str) -> np.ndarray:
    """The graph's logits for PAIRS, each pair encoded by the exported tokenizer as a sentence pair."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    encodings = [tokenizer.encode(query, document) for query, document in PAIRS]
    width = max(len(e.ids) for e in encodings)
    ids, mask, types = (np.zeros((len(PAIRS), width), np.int64) for _ in range(3))
    for i, e in enumerate(encodings):
        ids[i, : len(e.ids)], mask[i, : len(e.ids)], types[i, : len(e.ids)] = e.ids, 1, e.type_ids
    assert types.max() == 1  # a pair: the document's tokens are segment 1
    session = ort.InferenceSession(str(model_dir / Manifest.read(model_dir).variants[precision].file))
    return session.run(["logits"], dict(zip(INPUT_NAMES, (ids, mask, types), strict=True)))[0]


def _served(manifest: Manifest, logits: np.ndarray) -> np.ndarray:
    """The manifest's rule, written out: one logit -> activation(logit); two -> softmax(...)[relevant]."""
    logits = logits.astype(np.float64)
    if manifest.score_activation == "sigmoid":
        return 1 / (1 + np.exp(-logits[:, 0]))
    if manifest.score_activation == "identity":
        return logits[:, 0]
    assert manifest.score_activation == "softmax"
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probabilities[:, manifest.labels.index(manifest.relevant_label)]


def _oracle(checkpoint: Path, manifest: Manifest) -> np.ndarray:
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(checkpoint), device="cpu")
    if manifest.score_activation == "softmax":
        probabilities = model.predict(PAIRS, apply_softmax=True, batch_size=4)
        return np.asarray(probabilities)[:, manifest.labels.index(manifest.relevant_label)]
    return np.asarray(model.predict(PAIRS, batch_size=4))


ORACLE_CASES = [
    pytest.param({"seed": 41}, {}, "sigmoid", id="one-logit-sigmoid"),
    pytest.param({"seed": 42, "activation": "identity"}, {}, "identity", id="one-logit-identity"),
    pytest.param(
        {"seed": 43, "labels": ["not_relevant", "relevant"]}, {"task": "rerank"}, "softmax", id="two-logits-relevant"
    ),
    pytest.param(
        {"seed": 44, "labels": ["not_relevant", "relevant"]},
        {"task": "rerank", "relevant_label": "not_relevant"},
        "softmax",
        id="two-logits-label-0",
    ),
]


@pytest.mark.parametrize(("checkpoint_kwargs", "export_kwargs", "activation"), ORACLE_CASES)
def test_exported_scores_equal_cross_encoder_predict(
    checkpoint_kwargs, export_kwargs, activation, make_checkpoint, tmp_path
):
    from evaluation.backends import OnnxBackend

    checkpoint = make_checkpoint("rerank", **checkpoint_kwargs)
    manifest, warnings = export_checkpoint(
        str(checkpoint), tmp_path, name="rr", precisions=("fp32", "fp16"), quiet=True, **export_kwargs
    )
    assert manifest.task == "rerank" and manifest.score_activation == activation and not warnings
    default = "relevant" if activation == "softmax" else None
    assert manifest.relevant_label == export_kwargs.get("relevant_label", default)
    assert Manifest.read(tmp_path / "rr") == manifest
    for variant in manifest.variants.values():
        assert variant.parity.probes > 20 and variant.parity.top1_agreement >= 0.99
    want = _oracle(checkpoint, manifest)
    assert want.shape == (len(PAIRS),) and np.ptp(want) > 1e-3  # the pairs score apart
    fp32 = _served(manifest, _onnx_logits(tmp_path / "rr", "fp32"))
    assert np.abs(fp32 - want).max() <= 1e-4, np.abs(fp32 - want).max()
    fp16 = _served(manifest, _onnx_logits(tmp_path / "rr", "fp16"))
    assert np.abs(fp16 - want).max() <= (3e-2 if activation == "identity" else 1e-2)

    # electra-eval's offline backend (the server's runtime and pair encoding, the manifest's rule) agrees.
    items = [{"query": PAIRS[0][0], "documents": [d for _, d in PAIRS[:2]]}, {"query": "x", "documents": []}]
    items += [{"query": q, "documents": [d]} for q, d in PAIRS[2:]]
    answers = OnnxBackend(tmp_path / "rr", "fp32").predict(items, {"max_seq_len": manifest.max_seq_len}, batch_size=3)
    assert [len(a) for a in answers] == [2, 0, *[1] * (len(PAIRS) - 2)]
    flat = np.array([score for answer in answers for score in answer])
    assert np.abs(flat - want).max() <= 1e-4


def test_rerank_probes_are_pairs_and_fit_the_window(make_checkpoint):
    from transformers import AutoTokenizer

    from export.parity import build_probes

    tokenizer = AutoTokenizer.from_pretrained(str(make_checkpoint("rerank", seed=32)))
    rows = build_probes(tokenizer, 40, pairs_only=True)
    assert len(rows) > 20
    assert all(1 in types and len(ids) <= 40 for ids, types in rows)  # every probe has a second segment
    assert {len(ids) for ids, _ in rows} >= {3, 5, 8, 16, 31, 39, 40}


def test_cli_exports_a_two_logit_head_as_rerank(make_checkpoint, tmp_path, capsys):
    checkpoint = make_checkpoint("classify", labels=["not_relevant", "relevant"], seed=34)
    code = export_main(
        ["--model", str(checkpoint), "--output", str(tmp_path), "--name", "ce", "--task", "rerank",
         "--relevant-label", "not_relevant", "--precision", "fp32", "--quiet"]
    )  # fmt: skip
    assert code == 0
    assert "ce: rerank, score softmax of not_relevant" in capsys.readouterr().out
    manifest = Manifest.read(tmp_path / "ce")
    assert (manifest.task, manifest.score_activation, manifest.relevant_label) == ("rerank", "softmax", "not_relevant")
    assert manifest.labels == ["not_relevant", "relevant"] and manifest.output_names == ("logits",)

    code = export_main(
        ["--model", str(checkpoint), "--output", str(tmp_path), "--task", "rerank", "--relevant-label", "x"]
    )
    assert code == 1 and "relevant label 'x' is not one of" in capsys.readouterr().err
