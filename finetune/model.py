"""The starting checkpoint: any ELECTRA discriminator (hub id or directory; PyTorch, TensorFlow or
Flax weights), its tokenizer, and the model with the task's head and label set."""

from __future__ import annotations

from typing import Any

from toolchain import checkpoint as ckpt
from toolchain.errors import ExportError
from toolchain.frameworks import from_pretrained

ARCHITECTURES = {
    "classify": "ElectraForSequenceClassification",
    "rerank": "ElectraForSequenceClassification",  # a one-logit cross-encoder
    "qa": "ElectraForQuestionAnswering",
    "tag": "ElectraForTokenClassification",
    "discriminate": "ElectraForPreTraining",
}


def base_checkpoint(model: str, task: str, revision: str | None = None) -> ckpt.Checkpoint:
    """The checkpoint to start from, checked to be an ELECTRA discriminator (not a generator)."""
    location = ckpt.locate(model, revision)
    config = ckpt.load_config(model, location, revision)
    if config.model_type != "electra":
        raise ExportError(f"{model}: model_type '{config.model_type}' is not ELECTRA; start from an ELECTRA checkpoint")
    if "ElectraForMaskedLM" in (config.architectures or []):
        raise ExportError(f"{model}: an ELECTRA generator (masked LM); fine-tune the discriminator instead")
    return ckpt.Checkpoint(model, location, revision, config, task, ARCHITECTURES[task])


def base_label_names(checkpoint: ckpt.Checkpoint) -> list[str] | None:
    """The label names of a checkpoint that already has this task's head (continued fine-tuning)."""
    if ARCHITECTURES[checkpoint.task] not in (checkpoint.config.architectures or []):
        return None
    id2label = checkpoint.config.id2label or {}
    names = [str(id2label.get(i, id2label.get(str(i), ""))) for i in range(len(id2label))]
    return None if all(n.startswith("LABEL_") for n in names) else names


def load_model(checkpoint: ckpt.Checkpoint, label_config: dict[str, Any] | None = None, **config_updates: Any):
    """The task model: the checkpoint's encoder and a new head (a head of another size is replaced)."""
    # transformers (torch with it) loads with the model, not with this module (electra-finetune --help).
    import transformers
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(checkpoint.location, revision=checkpoint.revision)
    for key, value in {**(label_config or {}), **config_updates}.items():
        setattr(config, key, value)
    model_class = getattr(transformers, checkpoint.architecture)
    model, _ = from_pretrained(
        model_class,
        checkpoint.location,
        checkpoint.source,
        revision=checkpoint.revision,
        config=config,
        ignore_mismatched_sizes=True,
    )
    return model
