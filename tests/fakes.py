"""A fake runtime and fake model repositories for tests of the serving core without ONNX.

`write_model` writes what the loader reads (a manifest and the real ELECTRA tokenizer); the
`FakeRuntimes` factory stands in for onnxruntime, so the loader, registry, batcher and service
under test are the real ones. Logits are computed from the token ids alone, so any batching gives
the same per-row result.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np

from server.core.manifest import Manifest
from server.core.service import InferenceService, Result, TaskRequest

LABELS = ["NEG", "POS", "MID"]
# The fault-injection marker: a row holding this token id fails (or runs out of memory).
MARKER_TEXT = "zebra"


def manifest_json(name: str, task: str, max_seq_len: int = 32, labels: list[str] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "task": task,
        "max_seq_len": max_seq_len,
        "labels": labels
        if labels is not None
        else (LABELS if task == "classify" else ["LABEL_0"] if task == "rerank" else []),
        "problem_type": "single_label_classification" if task == "classify" else None,
        "variants": {
            "fp32": {"file": "model.onnx", "sha256": "0" * 64, "parity": {"max_abs_error": 1e-6, "top1_agreement": 1.0}}
        },
        "source": {"model": "fake"},
    }


def write_model(
    repository: Path,
    tokenizer_file: Path,
    name: str,
    task: str,
    *,
    version: str | None = None,
    max_seq_len: int = 32,
    labels: list[str] | None = None,
    tag: str = "",
) -> Path:
    """A model directory (flat, or `name/version/`), written elsewhere and renamed in, as an export does."""
    target = repository / name if version is None else repository / name / version
    staging = target.parent / f".staging-{target.name}"
    staging.mkdir(parents=True, exist_ok=True)
    manifest = manifest_json(name, task, max_seq_len, labels)
    if tag:
        manifest["source"]["revision"] = tag
    (staging / "manifest.json").write_text(json.dumps(manifest))
    shutil.copy(tokenizer_file, staging / "tokenizer.json")
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target


class FakeRuntime:
    """classify: logits [n, -n, 0] with n the row's real length; others: (id % 7) - 3 per token.

    `gate` (when set) blocks every run until released; `fail` makes runs raise; a row holding
    `marker_id` fails (`marker="error"`) or runs out of memory in any batch of more than one row
    (`marker="oom"`)."""

    device, providers = "cpu", ["CPUExecutionProvider"]

    def __init__(self, manifest: Manifest, precision: str = "fp32") -> None:
        self.manifest = manifest
        self.task = manifest.task
        self.precision = precision
        self.sequence_outputs: tuple[str, ...] = () if self.task in ("classify", "rerank") else manifest.output_names
        self.calls: list[tuple[int, int]] = []
        self.gate: threading.Event | None = None
        self.fail = False
        self.marker_id: int | None = None
        self.marker = "error"
        # rerank: a row's logit is 2 x (occurrences of this token id) - 1, else its length / 10.
        self.relevant_id: int | None = None
        self.closed = False

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray) -> dict:
        if self.closed:
            raise RuntimeError("run after close")
        self.calls.append(input_ids.shape)
        if self.gate is not None:
            assert self.gate.wait(10), "the test never released the runtime"
        if self.fail:
            raise RuntimeError("injected failure")
        if self.marker_id is not None and (input_ids == self.marker_id).any():
            if self.marker == "error":
                raise RuntimeError("injected failure on the marker")
            if input_ids.shape[0] > 1:
                raise RuntimeError("Failed to allocate memory for requested buffer of size 12345 (injected)")
        n = attention_mask.sum(axis=1).astype(np.float32)
        if self.task == "classify":
            return {"logits": np.stack([n, -n, np.zeros_like(n)], axis=1)}
        if self.task == "rerank":
            if self.relevant_id is None:
                logit = n / 10
            else:
                logit = 2 * ((input_ids == self.relevant_id) & (attention_mask > 0)).sum(axis=1).astype(np.float32) - 1
            heads = max(1, len(self.manifest.labels))
            return {
                "logits": np.stack([logit * k for k in range(1, heads + 1)], axis=1) if heads > 1 else logit[:, None]
            }
        if self.task == "qa":
            values = (input_ids % 7 - 3).astype(np.float32)
            return {"start_logits": values, "end_logits": -values}
        if self.task == "tag":
            values = (input_ids % 7 - 3).astype(np.float32)
            labels = max(1, len(self.manifest.labels))
            return {"logits": np.repeat(values[..., None], labels, axis=-1) * np.arange(labels, dtype=np.float32)}
        return {"logits": (input_ids % 7 - 3).astype(np.float32)}

    def warmup(self, buckets: Any) -> float:
        for batch, seq in buckets:
            ids = np.zeros((batch, seq), dtype=np.int64)
            self.run(ids, np.ones_like(ids), ids)
        self.calls.clear()
        return 0.0

    def close(self) -> None:
        self.closed = True


class FakeRuntimes:
    """A runtime factory for `ModelLoader`: every runtime it made, by model directory name."""

    def __init__(self) -> None:
        self.made: dict[str, list[FakeRuntime]] = {}

    def __call__(self, path: Path, manifest: Manifest, device: str, precision: str, options: Any) -> FakeRuntime:
        runtime = FakeRuntime(manifest, precision)
        self.made.setdefault(manifest.name, []).append(runtime)
        return runtime

    def latest(self, name: str) -> FakeRuntime:
        return self.made[name][-1]


async def run_json(
    service: InferenceService,
    task: str | None,
    model: str | None,
    inputs: Any,
    parameters: Any = None,
    deadline: float | None = None,
    protocol: str = "rest",
) -> Result:
    """What the REST front end does for one request, without HTTP."""
    with service.track(protocol) as call:
        if deadline is not None:
            call.deadline = deadline
        return await service.infer(call, TaskRequest(task, model, inputs=inputs, parameters=parameters))
