"""The training loop: transformers' Trainer with the usual knobs, evaluation on the validation set,
early stopping on its metric, and a checkpoint directory `electra-export` takes as it is."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class TrainOptions:
    epochs: float = 3.0
    max_steps: int = -1  # > 0: overrides epochs
    learning_rate: float = 5e-5
    batch_size: int = 16
    eval_batch_size: int = 32
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    gradient_accumulation_steps: int = 1
    seed: int = 42
    fp16: bool = False
    early_stopping_patience: int | None = None
    eval_strategy: str = "epoch"  # epoch | steps
    eval_steps: int | None = None
    logging_steps: int = 50
    quiet: bool = False
    deterministic: bool = False  # single thread and deterministic algorithms: byte-identical output


class _Rows:
    """A list of feature dicts as a map-style dataset."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]


def _log(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"[electra-finetune] {message}", file=sys.stderr, flush=True)


def train(
    model: Any,
    tokenizer: Any,
    train_rows: list[dict[str, Any]],
    validation_rows: list[dict[str, Any]] | None,
    collator: Any,
    compute_metrics: Callable[[Any], dict[str, float]] | None,
    metric: str | None,
    options: TrainOptions,
    output: Path,
    compute_loss: Callable[..., Any] | None = None,
) -> dict[str, float]:
    """Train `model` and save it (with its tokenizer) into `output`. Returns the final validation
    metrics (of the best checkpoint when early stopping), {} without a validation set.

    compute_loss: the Trainer's `compute_loss_func` (outputs, labels, num_items_in_batch) in place of
    the head's own loss (rerank: BCE on one logit)."""
    import torch
    from transformers import EarlyStoppingCallback, PrinterCallback, Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    fp16 = options.fp16 and torch.cuda.is_available()
    if options.fp16 and not fp16:
        _log("--fp16 needs CUDA; training in fp32 on the CPU", options.quiet)
    if options.quiet:
        hf_logging.set_verbosity_error()
    evaluate = bool(validation_rows)
    if options.early_stopping_patience is not None and not evaluate:
        raise ValueError("--early-stopping-patience needs a --validation-file")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    # The Trainer's own checkpoints (needed to return to the best one) live in a scratch directory:
    # `output` receives only the final model.
    scratch = Path(tempfile.mkdtemp(prefix=".trainer-", dir=output))
    strategy = options.eval_strategy if evaluate else "no"
    try:
        args = TrainingArguments(
            output_dir=str(scratch),
            num_train_epochs=options.epochs,
            max_steps=options.max_steps,
            learning_rate=options.learning_rate,
            per_device_train_batch_size=options.batch_size,
            per_device_eval_batch_size=options.eval_batch_size,
            warmup_ratio=options.warmup_ratio,
            weight_decay=options.weight_decay,
            gradient_accumulation_steps=options.gradient_accumulation_steps,
            seed=options.seed,
            data_seed=options.seed,
            full_determinism=options.deterministic,
            fp16=fp16,
            eval_strategy=strategy,
            eval_steps=options.eval_steps,
            save_strategy=strategy,
            save_only_model=True,
            save_total_limit=2,
            load_best_model_at_end=evaluate and metric is not None,
            metric_for_best_model=metric if evaluate else None,
            greater_is_better=True,
            logging_steps=options.logging_steps,
            logging_strategy="no" if options.quiet else "steps",
            disable_tqdm=options.quiet,
            report_to="none",
            dataloader_num_workers=0,
            use_cpu=not torch.cuda.is_available(),
        )
        callbacks = []
        if options.early_stopping_patience is not None:
            callbacks.append(EarlyStoppingCallback(early_stopping_patience=options.early_stopping_patience))
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=_Rows(train_rows),
            eval_dataset=_Rows(validation_rows) if evaluate else None,
            data_collator=collator,
            compute_metrics=compute_metrics if evaluate else None,
            compute_loss_func=compute_loss,
            callbacks=callbacks,
        )
        if options.quiet:
            trainer.remove_callback(PrinterCallback)  # it prints every log dict, evaluations included
        trainer.train()
        metrics: dict[str, float] = {}
        if evaluate:
            measured = trainer.evaluate()
            metrics = {k.removeprefix("eval_"): float(v) for k, v in measured.items() if isinstance(v, int | float)}
        trainer.save_model(str(output))
        tokenizer.save_pretrained(str(output))
        return metrics
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
