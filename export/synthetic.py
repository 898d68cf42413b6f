"""Small, deterministic ELECTRA checkpoints built offline from a seed and the real ELECTRA vocab.

They are saved exactly as a fine-tuned Hugging Face checkpoint would be (config.json,
model.safetensors, tokenizer files), so the exporter and the tests load them through the
same code path as `google/electra-large-discriminator` or any head fine-tuned from it.

A `rerank` checkpoint is a sequence classifier (one logit unless `labels` says otherwise) that
carries sentence-transformers' CrossEncoder mark (config.json's `sentence_transformers.activation_fn`,
as sentence-transformers 4.x and 5.x save it), as the ms-marco cross-encoders do.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from toolchain.ranking import IDENTITY_FN, SIGMOID_FN

CONLL_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]

ARCHITECTURES = {
    "discriminate": "ElectraForPreTraining",
    "classify": "ElectraForSequenceClassification",
    "rerank": "ElectraForSequenceClassification",
    "qa": "ElectraForQuestionAnswering",
    "tag": "ElectraForTokenClassification",
    "generator": "ElectraForMaskedLM",
}

SMALL_SHAPE: dict[str, Any] = {
    "vocab_size": 30522,
    "embedding_size": 64,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 128,
    # Wider than ELECTRA's 0.02 so that random heads give well-separated logits: parity
    # checks then compare real decisions rather than near-ties.
    "initializer_range": 0.2,
}


def vocab_path() -> Path:
    return Path(str(resources.files("export") / "data" / "electra-vocab.txt"))


def save_tokenizer(out_dir: Path) -> None:
    from transformers import ElectraTokenizerFast

    tokenizer = ElectraTokenizerFast(vocab_file=str(vocab_path()), do_lower_case=True, model_max_length=512)
    tokenizer.save_pretrained(str(out_dir))


def make_checkpoint(
    out_dir: Path,
    task: str,
    *,
    seed: int = 0,
    labels: list[str] | None = None,
    problem_type: str | None = None,
    activation: str | None = None,
    **shape: Any,
) -> Path:
    """Write a randomly initialised (seeded) ELECTRA checkpoint for `task` into `out_dir`.

    activation (rerank): the CrossEncoder's, sigmoid or identity; default: sigmoid for one logit
    (CrossEncoder's default), identity for two."""
    import torch
    import transformers
    from transformers import ElectraConfig

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_kwargs = {**SMALL_SHAPE, **shape}
    if task == "rerank" and labels is None:
        labels = ["LABEL_0"]
    if labels is not None:
        config_kwargs["id2label"] = dict(enumerate(labels))
        config_kwargs["label2id"] = {label: i for i, label in enumerate(labels)}
    if problem_type is not None:
        config_kwargs["problem_type"] = problem_type
    config = ElectraConfig(**config_kwargs)
    architecture = ARCHITECTURES[task]
    config.architectures = [architecture]
    if task == "rerank":
        activation = activation or ("sigmoid" if len(labels or ()) == 1 else "identity")
        classes = {"sigmoid": SIGMOID_FN, "identity": IDENTITY_FN}
        config.sentence_transformers = {"activation_fn": classes[activation], "version": "4.1.0"}
    torch.manual_seed(seed)
    model = getattr(transformers, architecture)(config).eval()
    model.save_pretrained(str(out_dir), safe_serialization=True)
    save_tokenizer(out_dir)
    return out_dir
