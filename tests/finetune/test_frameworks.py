"""Checkpoints saved by TensorFlow (`tf_model.h5`) or JAX / Flax (`flax_model.msgpack`): electra-export
and electra-finetune read them through transformers' converters, with the same weights as the PyTorch
checkpoint they were saved from; without the framework, one line names the extra to install."""

from __future__ import annotations

import shutil
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

from export.__main__ import main as export_main
from export.exporter import export_checkpoint
from finetune.__main__ import main as finetune_main
from finetune.model import base_checkpoint as finetune_base
from finetune.model import load_model as finetune_load
from toolchain import checkpoint as ckpt
from toolchain import frameworks
from toolchain.errors import ExportError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
HAVE = {
    "flax": find_spec("flax") is not None and find_spec("jax") is not None,
    "tf": find_spec("tensorflow") is not None and find_spec("tf_keras") is not None,
}


def _resave(pytorch_dir: Path, out: Path, framework: str) -> Path:
    """The PyTorch checkpoint saved again by the other framework, with no PyTorch weights left."""
    import json

    import transformers

    architecture = json.loads((pytorch_dir / "config.json").read_text())["architectures"][0]
    prefix = {"tf": "TF", "flax": "Flax"}[framework]
    model = getattr(transformers, prefix + architecture).from_pretrained(str(pytorch_dir), from_pt=True)
    model.save_pretrained(str(out))
    for name in TOKENIZER_FILES:
        if (pytorch_dir / name).exists():
            shutil.copy(pytorch_dir / name, out / name)
    assert (out / frameworks.FOREIGN_FILES[framework]).is_file()
    assert not any((out / name).exists() for name in frameworks.PYTORCH_FILES)
    return out


def _logits(model, ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids)).logits.numpy()


def _requires(framework: str) -> None:
    if not HAVE[framework]:
        pytest.skip(f"{frameworks.NAMES[framework]} is not installed (pip install 'electra-serve[{framework}]')")


@pytest.mark.parametrize("framework", ["flax", "tf"])
def test_export_reads_the_frameworks_weights(framework, make_checkpoint, tmp_path):
    _requires(framework)
    original = make_checkpoint("classify", labels=["NEGATIVE", "POSITIVE"], seed=51)
    converted = _resave(original, tmp_path / framework, framework)
    manifest, _ = export_checkpoint(str(converted), tmp_path / "repo", name="m", precisions=["fp32"], quiet=True)
    assert manifest.labels == ["NEGATIVE", "POSITIVE"]

    import onnxruntime as ort
    from transformers import ElectraForSequenceClassification

    ids = np.array([[101, 2307, 2143, 999, 102]], dtype=np.int64)
    session = ort.InferenceSession(str(tmp_path / "repo" / "m" / "model.fp32.onnx"), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids),
                                           "token_type_ids": np.zeros_like(ids)})[0]  # fmt: skip
    # Against the original PyTorch weights: the conversion lost nothing.
    want = _logits(ElectraForSequenceClassification.from_pretrained(str(original)).eval(), ids)
    np.testing.assert_allclose(onnx_logits, want, atol=1e-4)


@pytest.mark.parametrize("framework", ["flax", "tf"])
def test_finetune_starts_from_the_frameworks_weights(framework, base_checkpoint, datasets, tmp_path):
    _requires(framework)
    converted = _resave(base_checkpoint, tmp_path / framework, framework)
    import torch
    from transformers import ElectraForPreTraining

    model = finetune_load(finetune_base(str(converted), "tag"), {"num_labels": 3})
    original = ElectraForPreTraining.from_pretrained(str(base_checkpoint))
    for name, tensor in original.electra.state_dict().items():
        assert torch.equal(model.electra.state_dict()[name], tensor), name  # the encoder, as saved
    code = finetune_main(
        ["--task", "tag", "--model", str(converted), "--train-file", str(datasets["tag-validation"]),
         "--output", str(tmp_path / "out"), "--max-steps", "2", "--quiet"]
    )  # fmt: skip
    assert code == 0 and (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.parametrize("framework", ["flax", "tf"])
def test_a_missing_framework_names_its_extra(framework, tmp_path, monkeypatch, capsys, make_checkpoint):
    checkpoint = tmp_path / "foreign"
    checkpoint.mkdir()
    shutil.copy(make_checkpoint("classify", labels=["a", "b"], seed=52) / "config.json", checkpoint / "config.json")
    (checkpoint / frameworks.FOREIGN_FILES[framework]).write_bytes(b"not read: the framework is missing")
    real_find_spec = frameworks.find_spec
    monkeypatch.setattr(
        frameworks, "find_spec", lambda name: None if name in frameworks.REQUIRES[framework] else real_find_spec(name)
    )
    with pytest.raises(ExportError, match=rf"pip install 'electra-serve\[{framework}\]'"):
        ckpt.load_model(ckpt.resolve(str(checkpoint)))
    assert export_main(["--model", str(checkpoint), "--output", str(tmp_path / "repo"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and frameworks.FOREIGN_FILES[framework] in err[0] and f"electra-serve[{framework}]" in err[0]
