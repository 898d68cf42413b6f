"""The demo classifier as a peer server runs it: its fp32 ONNX graph on onnxruntime, its own
tokenizer.json, the labels from its manifest.

Runs inside a peer's own virtual environment (numpy, onnxruntime, tokenizers only): it must not
import electra-serve. The session settings are electra-serve's CPU settings (one intra-op thread
per run, runs in parallel up to the cores, SkipLayerNormFusion off), so the model costs the
peers what it costs us and the comparison is about serving: batching, HTTP, tokenization.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

# onnxruntime's CPU SkipLayerNormalization kernel is several times slower than the Add +
# LayerNormalization it would fuse; electra-serve's CPU sessions keep them apart too.
DISABLED_OPTIMIZERS = ["SkipLayerNormFusion"]


class OnnxClassifier:
    """Texts in, (label, score) out: tokenize, pad to the longest, run, softmax."""

    def __init__(self, model_dir: Path, threads: int = 1) -> None:
        model_dir = Path(model_dir)
        manifest = json.loads((model_dir / "manifest.json").read_text())
        variant = manifest["variants"]["fp32"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(model_dir / variant["file"]),
            sess_options=options,
            providers=["CPUExecutionProvider"],
            disabled_optimizers=DISABLED_OPTIMIZERS,
        )
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.labels = [str(label) for label in manifest["labels"]]
        self.tokenizer = Tokenizer.from_file(str(model_dir / manifest.get("tokenizer", "tokenizer.json")))
        self.tokenizer.enable_truncation(int(manifest.get("max_seq_len", 512)))
        self.tokenizer.no_padding()

    def __call__(self, texts: list[str]) -> tuple[list[str], list[float]]:
        encodings = self.tokenizer.encode_batch(texts)
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), width), dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        types = np.zeros((len(texts), width), dtype=np.int64)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            ids[row, :n] = e.ids
            mask[row, :n] = 1
            types[row, :n] = e.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        logits = self.session.run(["logits"], {k: v for k, v in feeds.items() if k in self.inputs})[0]
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=-1, keepdims=True)
        best = probabilities.argmax(axis=-1)
        return [self.labels[i] for i in best], [float(probabilities[r, i]) for r, i in enumerate(best)]
