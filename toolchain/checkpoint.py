"""Resolve a model id or local directory, decide which task it serves, and load its model and tokenizer.

transformers and huggingface_hub (torch with them) are imported inside the functions that use them:
every toolchain CLI imports this module, and its --help loads neither."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolchain.errors import ExportError
from toolchain.frameworks import from_pretrained

TASK_BY_ARCHITECTURE = {
    "ElectraForPreTraining": "discriminate",
    "ElectraForSequenceClassification": "classify",
    "ElectraForQuestionAnswering": "qa",
    "ElectraForTokenClassification": "tag",
}
ARCHITECTURE_BY_TASK = {task: arch for arch, task in TASK_BY_ARCHITECTURE.items()}
TASKS = ("discriminate", "classify", "qa", "tag")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class Checkpoint:
    source: str  # what the user gave: a hub id or a directory
    location: str  # what from_pretrained receives
    revision: str | None
    config: Any  # transformers.ElectraConfig
    task: str
    architecture: str

    @property
    def max_position_embeddings(self) -> int:
        return int(self.config.max_position_embeddings)


def _hub_unreachable() -> str | None:
    """Why the hub cannot be reached (a 3 s connect), or None. Without this check an offline machine
    spends ~30 s in huggingface_hub's retries, printing them, before a truncated error."""
    import socket
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    try:
        socket.create_connection((host, endpoint.port or 443), timeout=3).close()
    except OSError as exc:
        return f"{host}: {exc.strerror or exc}"
    return None


def _go_offline() -> None:
    """Use the local cache only from here on (transformers asks huggingface_hub's constant)."""
    import huggingface_hub.constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    huggingface_hub.constants.HF_HUB_OFFLINE = True


def locate(model: str, revision: str | None = None) -> str:
    """What from_pretrained receives for `model`: a checkpoint directory, or a hub id that is either
    reachable or in the local cache. Fails in seconds, with one line, when it is neither."""
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ExportError(f"{model}: not a Hugging Face checkpoint directory (no config.json)")
        return str(path.resolve())
    if model.startswith((".", "/", "~")) or not HUB_ID.match(model):
        raise ExportError(f"{model}: no such directory")
    from huggingface_hub import constants, try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(model, "config.json", revision=revision), str)
    if constants.HF_HUB_OFFLINE:
        if not cached:
            raise ExportError(
                f"{model}: not in the local Hugging Face cache, and HF_HUB_OFFLINE is set: "
                "pass a checkpoint directory, or download the model where the hub is reachable"
            )
        return model
    problem = _hub_unreachable()
    if problem is not None:
        if not cached:
            raise ExportError(
                f"{model}: the Hugging Face hub cannot be reached ({problem}) and the model is not in the "
                "local cache: pass a checkpoint directory (a local path), or download it where the hub is "
                "reachable and set HF_HUB_OFFLINE=1 here"
            )
        _go_offline()
    return model


def load_config(model: str, location: str, revision: str | None = None) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(location, revision=revision)
    except Exception as exc:  # transformers raises OSError/ValueError/EnvironmentError variants
        raise ExportError(f"{model}: cannot load its config ({exc.__class__.__name__}: {exc})".splitlines()[0]) from exc


def resolve(model: str, task: str = "auto", revision: str | None = None) -> Checkpoint:
    location = locate(model, revision)
    config = load_config(model, location, revision)
    if config.model_type != "electra":
        raise ExportError(
            f"{model}: model_type '{config.model_type}' is not ELECTRA; only ELECTRA checkpoints are supported"
        )
    architectures = list(config.architectures or [])
    detected = next((TASK_BY_ARCHITECTURE[a] for a in architectures if a in TASK_BY_ARCHITECTURE), None)
    if any(a == "ElectraForMaskedLM" for a in architectures) or ("generator" in model.lower() and detected is None):
        raise ExportError(f"{model}: an ELECTRA generator (masked LM) is not served; export the discriminator instead")
    if task == "auto":
        if detected is None:
            raise ExportError(
                f"{model}: cannot infer the task from architectures {architectures or '(none)'}; "
                f"pass --task one of {', '.join(TASKS)}"
            )
        task = detected
    elif task not in TASKS:
        raise ExportError(f"unknown task '{task}': choose auto or one of {', '.join(TASKS)}")
    elif detected is not None and detected != task:
        raise ExportError(f"{model}: its architecture {architectures[0]} serves '{detected}', not '{task}'")
    revision = revision or getattr(config, "_commit_hash", None)
    return Checkpoint(model, location, revision, config, task, ARCHITECTURE_BY_TASK[task])


def load_model(checkpoint: Checkpoint):
    """The PyTorch model with its own head: ElectraForPreTraining keeps the discriminator head."""
    import transformers

    model_class = getattr(transformers, checkpoint.architecture)
    # PyTorch, TensorFlow (tf_model.h5) or Flax (flax_model.msgpack) weights alike.
    model, info = from_pretrained(model_class, checkpoint.location, checkpoint.source, revision=checkpoint.revision)
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("position_ids")]
    if missing:
        # A head that was not in the checkpoint would be random: its outputs would be meaningless.
        raise ExportError(
            f"{checkpoint.source}: weights missing for {checkpoint.architecture}: {', '.join(missing[:4])}"
            + (" ..." if len(missing) > 4 else "")
        )
    return model.eval()


def load_tokenizer(checkpoint: Checkpoint):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(checkpoint.location, revision=checkpoint.revision, use_fast=True)
    except Exception as exc:
        raise ExportError(f"{checkpoint.source}: cannot load its tokenizer ({exc})".splitlines()[0]) from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ExportError(f"{checkpoint.source}: no fast tokenizer could be built (tokenizer.json or vocab.txt needed)")
    return tokenizer


def labels_of(checkpoint: Checkpoint) -> list[str]:
    if checkpoint.task not in ("classify", "tag"):
        return []
    id2label = checkpoint.config.id2label or {}
    return [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(checkpoint.config.num_labels)]


def problem_type_of(checkpoint: Checkpoint) -> str | None:
    if checkpoint.task != "classify":
        return None
    if checkpoint.config.problem_type:
        return str(checkpoint.config.problem_type)
    return "regression" if checkpoint.config.num_labels == 1 else "single_label_classification"
