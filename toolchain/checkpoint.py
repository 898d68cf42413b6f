"""Resolve a model id or local directory, decide which task it serves, and load its model and tokenizer.

transformers and huggingface_hub (torch with them) are imported inside the functions that use them:
every toolchain CLI imports this module, and its --help loads neither."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolchain import ranking
from toolchain.errors import ExportError
from toolchain.frameworks import from_pretrained

TASK_BY_ARCHITECTURE = {
    "ElectraForPreTraining": "discriminate",
    "ElectraForSequenceClassification": "classify",
    "ElectraForQuestionAnswering": "qa",
    "ElectraForTokenClassification": "tag",
}
# A reranker (cross-encoder) is a sequence classifier whose one logit, or the softmax of whose two,
# is a relevance score.
ARCHITECTURE_BY_TASK = {
    **{task: arch for arch, task in TASK_BY_ARCHITECTURE.items()},
    "rerank": "ElectraForSequenceClassification",
}
TASKS = ("discriminate", "classify", "qa", "tag", "rerank")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# sentence-transformers' own files beside a checkpoint (config.json holds the rest).
ST_CONFIG_FILE = "config_sentence_transformers.json"
ST_MODULES_FILE = "modules.json"


@dataclass
class Checkpoint:
    source: str  # what the user gave: a hub id or a directory
    location: str  # what from_pretrained receives
    revision: str | None
    config: Any  # transformers.ElectraConfig
    task: str
    architecture: str
    # rerank only: the manifest's fields (see server.core.manifest.Manifest).
    score_activation: str | None = None
    relevant_label: str | None = None

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


def resolve(
    model: str,
    task: str = "auto",
    revision: str | None = None,
    *,
    relevant_label: str | None = None,
    score_activation: str | None = None,
) -> Checkpoint:
    """The checkpoint and the task it is exported for. `--task auto` reads the architecture, and
    takes a sequence classifier with one logit that sentence-transformers saved as a CrossEncoder
    for a reranker (see `cross_encoder_activation`); `relevant_label` and `score_activation`
    (rerank only) override what the checkpoint says, see `rerank_head`."""
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
    activation_fn = extra_modules = None
    if detected == "classify" or task == "rerank":
        crossed, activation_fn, extra_modules = cross_encoder_activation(model, location, config, revision)
        if crossed and detected == "classify" and int(config.num_labels) == 1:
            detected = "rerank"
    if task == "auto":
        if detected is None:
            raise ExportError(
                f"{model}: cannot infer the task from architectures {architectures or '(none)'}; "
                f"pass --task one of {', '.join(TASKS)}"
            )
        task = detected
    elif task not in TASKS:
        raise ExportError(f"unknown task '{task}': choose auto or one of {', '.join(TASKS)}")
    elif detected is not None and ARCHITECTURE_BY_TASK[detected] != ARCHITECTURE_BY_TASK[task]:
        raise ExportError(f"{model}: its architecture {architectures[0]} serves '{detected}', not '{task}'")
    revision = revision or getattr(config, "_commit_hash", None)
    checkpoint = Checkpoint(model, location, revision, config, task, ARCHITECTURE_BY_TASK[task])
    if task == "rerank":
        if extra_modules:
            raise ExportError(
                f"{model}: a CrossEncoder of several modules ({extra_modules}) computes its scores beyond the "
                "transformers model; only a CrossEncoder that is its sequence-classification model is exported"
            )
        checkpoint.score_activation, checkpoint.relevant_label = rerank_head(
            model, config, activation_fn, relevant_label, score_activation
        )
    elif relevant_label is not None or score_activation is not None:
        raise ExportError(f"--relevant-label and --score-activation are for rerank exports, not {task}")
    return checkpoint


def _optional_json(model: str, location: str, filename: str, revision: str | None) -> Any:
    """A JSON file beside the checkpoint (a directory or the hub's files), or None when it has none."""
    from transformers.utils import cached_file

    try:
        path = cached_file(
            location,
            filename,
            revision=revision,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
    except OSError:
        path = None
    if not path:
        return None
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{model}: cannot read its {filename} ({exc})".splitlines()[0]) from exc


def cross_encoder_activation(
    model: str, location: str, config: Any, revision: str | None
) -> tuple[bool, str | None, str | None]:
    """(whether sentence-transformers saved this checkpoint as a CrossEncoder, the dotted path of its
    activation or None for CrossEncoder's default, the modules it has beyond the transformers model
    or None), read where each version keeps them, in the order CrossEncoder itself reads them:

    - `config_sentence_transformers.json` with `"model_type": "CrossEncoder"` and its `activation_fn`
      (sentence-transformers 5.x, whose CrossEncoder is saved as modules: `modules.json` must then
      hold the transformers model alone, or the scores are not the model's logits);
    - `config.json`'s `"sentence_transformers": {"activation_fn": ...}` (4.x and 5.x);
    - `config.json`'s `sbert_ce_default_activation_function` (2.x and 3.x, written only when the
      CrossEncoder was given an activation; one saved with the default carries no mark at all, and
      is a plain classifier here: export it with `--task rerank`).

    A `config_sentence_transformers.json` of a SentenceTransformer (a bi-encoder) is no CrossEncoder."""
    crossed, path, extra = False, None, None
    st_config = _optional_json(model, location, ST_CONFIG_FILE, revision)
    if isinstance(st_config, dict) and (st_config.get("model_type") == "CrossEncoder" or "activation_fn" in st_config):
        crossed, path = True, st_config.get("activation_fn") or None
        modules = _optional_json(model, location, ST_MODULES_FILE, revision)
        if isinstance(modules, list) and (
            len(modules) > 1 or any(not isinstance(m, dict) or m.get("path") not in ("", None) for m in modules)
        ):
            extra = ", ".join(str(m.get("type", "?") if isinstance(m, dict) else m).rsplit(".", 1)[-1] for m in modules)
    section = getattr(config, "sentence_transformers", None)
    if isinstance(section, dict):
        crossed = True
        path = path or section.get("activation_fn") or None
    legacy = getattr(config, "sbert_ce_default_activation_function", None)
    if legacy:
        crossed = True
        path = path or legacy
    return crossed, path, extra


def activation_name(model: str, path: str) -> str:
    """sigmoid or identity, from a CrossEncoder's activation (a dotted path such as
    `torch.nn.modules.activation.Sigmoid`)."""
    if path.startswith("torch.") and path.rsplit(".", 1)[-1] in ("Sigmoid", "Identity"):
        return path.rsplit(".", 1)[-1].lower()
    raise ExportError(
        f"{model}: its CrossEncoder activation {path} is neither Sigmoid nor Identity; "
        "name the served one with --score-activation sigmoid|identity"
    )


def rerank_head(
    model: str, config: Any, activation_fn: str | None, relevant_label: str | None, score_activation: str | None
) -> tuple[str, str | None]:
    """(score_activation, relevant_label) of a reranker's manifest.

    One logit: `score_activation` as given, else the CrossEncoder's activation, else sigmoid (what
    CrossEncoder applies to a one-logit head by default). Two logits: softmax, the score being the
    probability of `relevant_label` (default: the label named "relevant", else label 1)."""
    labels = [str(config.id2label.get(i, config.id2label.get(str(i), f"LABEL_{i}"))) for i in range(config.num_labels)]
    if len(labels) == 1:
        if relevant_label is not None:
            raise ExportError(f"{model}: --relevant-label is for two-logit heads; this head has one logit")
        if score_activation not in (None, *ranking.ACTIVATIONS):
            raise ExportError(f"--score-activation of a one-logit head is sigmoid or identity, not {score_activation}")
        return score_activation or (activation_name(model, activation_fn) if activation_fn else "sigmoid"), None
    if len(labels) != 2:
        raise ExportError(
            f"{model}: a reranker has one logit (the score) or two (not relevant / relevant); "
            f"this head has {len(labels)} labels ({', '.join(labels)})"
        )
    if score_activation not in (None, "softmax"):
        raise ExportError(f"--score-activation of a two-logit head is softmax, not {score_activation}")
    if activation_fn and not activation_fn.endswith(".Identity") and score_activation is None:
        raise ExportError(
            f"{model}: its CrossEncoder applies {activation_fn} to the two logits, and a two-logit reranker "
            "serves softmax(logits)[relevant]; pass --score-activation softmax to export it so anyway"
        )
    try:
        index = ranking.relevant_index(labels, relevant_label)
    except ValueError as exc:
        raise ExportError(f"{model}: {exc}") from exc
    return "softmax", labels[index]


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
    if checkpoint.task not in ("classify", "tag", "rerank"):
        return []
    id2label = checkpoint.config.id2label or {}
    return [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(checkpoint.config.num_labels)]


def problem_type_of(checkpoint: Checkpoint) -> str | None:
    if checkpoint.task != "classify":
        return None
    if checkpoint.config.problem_type:
        return str(checkpoint.config.problem_type)
    return "regression" if checkpoint.config.num_labels == 1 else "single_label_classification"
