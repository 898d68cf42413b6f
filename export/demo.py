"""The four embedded demo models: small ELECTRA shapes, the real vocab, fine-tuned offline with
`electra-finetune`'s own code on small synthetic sets (`finetune.synthetic`), then exported and
scored (the manifest's `evaluation`) on a held-out synthetic set.

- demo-classify: sentiment words -> NEGATIVE / POSITIVE ("Great film!" is POSITIVE);
- demo-qa: a question word (who / what / where / when) -> that slot of the sentence, or no answer;
- demo-tag: names, places, organisations and nationalities -> CoNLL-2003 labels;
- demo-discriminator: the replaced-token-detection head trained on sentences with replaced words.

They know the synthetic sets' small world, nothing more: toys that answer the README's examples
sensibly, not models of English. Each starts from a random discriminator of `DEMO_SHAPE` (fixed
seed) without dropout, which lets a 12-layer encoder learn these sets in a couple of hundred steps.

`electra-export --demo` writes byte-identical files on every run: fixed seeds, one thread and
deterministic algorithms for training, single-threaded reference and parity runs, no timestamps.
The models are built in parallel processes (one thread each), two at a time on two cores.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluation.export_hook import EvalRequest
from export.synthetic import CONLL_LABELS, make_checkpoint, vocab_path
from finetune import synthetic
from finetune.run import FinetuneArgs, finetune
from finetune.train import TrainOptions
from server.core.manifest import Manifest
from toolchain.classification import Columns

# google/electra-small-discriminator's shape (14M parameters) with a shorter position table,
# so the demo repository stays small and starts fast while batching behaves like a real model.
DEMO_SHAPE = {
    "embedding_size": 128,
    "hidden_size": 256,
    "num_hidden_layers": 12,
    "num_attention_heads": 4,
    "intermediate_size": 1024,
    "max_position_embeddings": 512,
    "initializer_range": 0.02,
}
# Dropout slows learning from scratch several times over; these models never see real text anyway.
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


@dataclass(frozen=True)
class DemoSpec:
    task: str  # the served task
    seed: int
    steps: int  # optimizer steps of batch_size examples
    examples: int  # synthetic training examples
    learning_rate: float = 3e-4
    batch_size: int = 16
    labels: list[str] | None = None
    validation: int = 100  # held-out synthetic examples scored into the manifest
    extra: dict[str, Any] = field(default_factory=dict)


DEMO_MODELS: dict[str, DemoSpec] = {
    "demo-discriminator": DemoSpec("discriminate", seed=1, steps=60, examples=960),
    "demo-classify": DemoSpec("classify", seed=2, steps=100, examples=1600, labels=["NEGATIVE", "POSITIVE"]),
    "demo-qa": DemoSpec("qa", seed=3, steps=220, examples=3520, learning_rate=4e-4),
    "demo-tag": DemoSpec("tag", seed=4, steps=80, examples=1280, labels=CONLL_LABELS),
}
DEMO_PRECISIONS = ("fp32", "fp16", "int8")
# What the fine-tuning task is called for each served task.
FINETUNE_TASK = {"discriminate": "discriminate", "classify": "classify", "qa": "qa", "tag": "tag"}


def _write_sets(spec: DemoSpec, directory: Path) -> tuple[Path, Path | None]:
    """The synthetic training and validation files of one demo model."""
    seed_train, seed_val = 1000 * spec.seed + 1, 1000 * spec.seed + 2
    if spec.task == "classify":
        return (
            synthetic.write_table(directory / "train.jsonl", synthetic.sentiment(spec.examples, seed_train)),
            synthetic.write_table(directory / "validation.jsonl", synthetic.sentiment(spec.validation, seed_val)),
        )
    if spec.task == "qa":
        return (
            synthetic.write_json(directory / "train.json", synthetic.squad(spec.examples, seed_train)),
            synthetic.write_json(directory / "validation.json", synthetic.squad(spec.validation, seed_val)),
        )
    if spec.task == "tag":
        return (
            synthetic.write_conll(directory / "train.conll", synthetic.tagged(spec.examples, seed_train)),
            synthetic.write_conll(directory / "validation.conll", synthetic.tagged(spec.validation, seed_val)),
        )
    vocab = vocab_path().read_text(encoding="utf-8").split("\n")
    return synthetic.write_conll(directory / "train.conll", synthetic.replaced(spec.examples, seed_train, vocab)), None


def _linear_head(checkpoint: Path) -> None:
    """Start the replaced-token-detection head's hidden layer as the identity.

    From ELECTRA's random init, that layer (dense + GELU) collapses within a few steps to one output
    for every token (the prior of ~10% replaced) and needs well over a hundred steps to recover (seen
    on this shape and data); from the identity, the replaced words are learnt straight away."""
    # torch and transformers (the export extra) load when a model is built, not with DEMO_SHAPE.
    import torch
    from transformers import ElectraForPreTraining

    model = ElectraForPreTraining.from_pretrained(str(checkpoint))
    dense = model.discriminator_predictions.dense
    with torch.no_grad():
        dense.weight.copy_(torch.eye(dense.weight.shape[0]))
        dense.bias.zero_()
    model.save_pretrained(str(checkpoint), safe_serialization=True)


def build_demo_model(name: str, output: Path, quiet: bool = False) -> dict[str, Any]:
    """Fine-tune, export and score one demo model into `output/<name>`; returns its manifest as JSON."""
    # torch, and the exporter's onnxruntime and onnx, load when a model is built: importing this module
    # for DEMO_SHAPE (finetune.example, loadtests.models) loads neither.
    import torch

    from export.exporter import Progress, export_checkpoint

    torch.set_num_threads(1)
    spec = DEMO_MODELS[name]
    progress = Progress(name, quiet)
    with tempfile.TemporaryDirectory(prefix=f"electra-{name}-") as scratch:
        root = Path(scratch)
        base = make_checkpoint(root / "base", "discriminate", seed=spec.seed, **DEMO_SHAPE, **NO_DROPOUT)
        if spec.task == "discriminate":
            _linear_head(base)
        train_file, validation_file = _write_sets(spec, root)
        progress(f"fine-tuning on synthetic data: {spec.steps} steps of {spec.batch_size} (the longest part)")
        options = TrainOptions(
            max_steps=spec.steps,
            learning_rate=spec.learning_rate,
            batch_size=spec.batch_size,
            warmup_ratio=0.1,
            weight_decay=0.0,
            seed=spec.seed,
            deterministic=True,
            quiet=True,
        )
        finetune(
            FinetuneArgs(
                task=FINETUNE_TASK[spec.task],
                model=str(base),
                train_file=train_file,
                output=root / "checkpoint",
                columns=Columns(text="text", pair="text_pair", label="label"),
                labels=spec.labels,
                options=options,
            )
        )
        evaluation = (
            EvalRequest(validation_file, Columns(text="text", pair="text_pair", label="label"))
            if validation_file
            else None
        )
        manifest, _ = export_checkpoint(
            str(root / "checkpoint"),
            Path(output),
            name=name,
            precisions=DEMO_PRECISIONS,
            deterministic=True,
            quiet=quiet,
            evaluation=evaluation,
        )
    # The source is a scratch directory; record what the model really is instead.
    manifest.source.model = f"electra-serve demo ({spec.task}, seed {spec.seed}, fine-tuned on synthetic data)"
    manifest.write(Path(output) / name)
    return manifest.model_dump(mode="json")


# One model's fine-tuning, export and scoring on one core (measured: 43-50 s each, 97 s for all four
# on two cores); the estimate printed before a demo build.
DEMO_SECONDS_PER_MODEL = 48


def demo_workers() -> int:
    """Models built at once: one per core, up to all four (each trains and exports on one thread)."""
    return max(1, min(len(DEMO_MODELS), os.cpu_count() or 1))


def write_demo_repository(output: Path, quiet: bool = False, workers: int | None = None) -> list[Manifest]:
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    workers = workers or demo_workers()
    if not quiet:
        print(
            f"[electra-export] writing the {len(DEMO_MODELS)} demo models ({', '.join(DEMO_MODELS)}), "
            f"{workers} at a time: about {DEMO_SECONDS_PER_MODEL * len(DEMO_MODELS) / workers:.0f} s",
            file=sys.stderr,
        )
    if workers == 1:
        built = [build_demo_model(name, output, quiet) for name in DEMO_MODELS]
    else:
        # Fresh interpreters: a forked copy of a process that has run torch may deadlock in its thread pools.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            # The longest trainings first, so that the workers finish together.
            order = sorted(DEMO_MODELS, key=lambda name: -DEMO_MODELS[name].steps)
            futures = {name: pool.submit(build_demo_model, name, output, quiet) for name in order}
            built = [futures[name].result() for name in DEMO_MODELS]
    return [Manifest.model_validate(manifest) for manifest in built]
