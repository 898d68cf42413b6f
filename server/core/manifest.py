"""The model repository's manifest schema, shared by the exporter (writer) and the server (reader).

`DIR/<name>/manifest.json` plus the files it names, paths relative to `DIR/<name>`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MANIFEST_FILE = "manifest.json"
SCHEMA_VERSION = 1

Task = Literal["discriminate", "classify", "qa", "tag", "rerank"]
# How a cross-encoder's logits become its relevance score (see Manifest.score_activation).
ScoreActivation = Literal["sigmoid", "identity", "softmax"]
Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "int8")

# Output tensor names per task: optimum's names.
OUTPUT_NAMES: dict[str, tuple[str, ...]] = {
    "discriminate": ("logits",),
    "classify": ("logits",),
    "tag": ("logits",),
    "qa": ("start_logits", "end_logits"),
    "rerank": ("logits",),
}
INPUT_NAMES: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")


class Parity(BaseModel):
    model_config = ConfigDict(extra="allow")

    max_abs_error: float
    top1_agreement: float
    probes: int = 0


class Variant(BaseModel):
    model_config = ConfigDict(extra="allow")

    file: str
    sha256: str
    parity: Parity
    size_bytes: int = 0
    # The weights as ONNX external data beside the graph (memory-mapped by onnxruntime); None when
    # the graph file holds them itself (exports before 0.2, or hand-made repositories).
    data_file: str | None = None
    data_sha256: str | None = None
    data_size_bytes: int = 0
    fused_ops: dict[str, int] = Field(default_factory=dict)


class Source(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    revision: str | None = None
    architecture: str | None = None


class Evaluation(BaseModel):
    """A task metric measured on a labelled file at export time (`electra-export --eval-file`), per
    variant: `scores` maps `pytorch` (the reference), `fp32`, `fp16`, `int8` to {metric: points}."""

    model_config = ConfigDict(extra="allow")

    metric: str
    data_file: str
    data_sha256: str
    examples: int = 0
    scores: dict[str, dict[str, float]] = Field(default_factory=dict)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    schema_version: int = SCHEMA_VERSION
    name: str
    task: Task
    max_seq_len: int
    labels: list[str] = Field(default_factory=list)
    problem_type: str | None = None
    # rerank only. One logit: the score is `score_activation` of it (sigmoid or identity, as the
    # sentence-transformers CrossEncoder's activation says; its raw score is the logit). Two logits:
    # "softmax", the score is the probability of `relevant_label` (its raw score is that logit minus
    # the other: the softmax probability is the sigmoid of it).
    score_activation: ScoreActivation | None = None
    relevant_label: str | None = None
    tokenizer: str = "tokenizer.json"
    # Checked at load when present (exports since 0.3); older repositories have none.
    tokenizer_sha256: str | None = None
    do_lower_case: bool = True
    num_heads: int | None = None
    hidden_size: int | None = None
    num_layers: int | None = None
    variants: dict[Precision, Variant]
    source: Source
    exporter: dict[str, str] = Field(default_factory=dict)
    evaluation: Evaluation | None = None

    @property
    def output_names(self) -> tuple[str, ...]:
        return OUTPUT_NAMES[self.task]

    def write(self, model_dir: Path) -> Path:
        path = Path(model_dir) / MANIFEST_FILE
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def read(cls, model_dir: Path) -> Manifest:
        return cls.model_validate_json((Path(model_dir) / MANIFEST_FILE).read_text())


def list_models(repository: Path) -> list[Path]:
    """Model directories of a repository: those holding a manifest (a half-written export has none)."""
    repository = Path(repository)
    if not repository.is_dir():
        return []
    return sorted(p for p in repository.iterdir() if (p / MANIFEST_FILE).is_file())
