"""A labelled example to try `electra-finetune` on, offline: `python -m finetune.example DIR [--task T]`.

Writes, in DIR, a training and a validation file of synthetic data in the task's usual format and
`base`, a small ELECTRA discriminator (the shape of google/electra-small-discriminator, randomly
initialised, no dropout) to fine-tune from:

- classify: train.tsv, dev.tsv (reviews in GLUE SST-2's columns `sentence`, `label`: NEGATIVE or
  POSITIVE, from the sentiment words);
- qa: train.json, dev.json (SQuAD 2.0: a question word pointing at the who / what / where / when of
  a sentence, or at nothing);
- tag: train.conll, dev.conll (CoNLL-2003 columns: people, places, organisations, nationalities).

It is the README's fine-tuning walk-through without a hub or a dataset download. The base knows no
English, so it learns this synthetic world only, and wants a higher learning rate than a pretrained
ELECTRA (3e-4 to 4e-4 rather than 5e-5 to 1e-4).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from export.demo import DEMO_SHAPE, NO_DROPOUT
from export.synthetic import make_checkpoint
from finetune import synthetic

SEED = 7
# Training examples per task: what the demo models learn their world from (export/demo.py).
TRAIN_ROWS = {"classify": 1600, "qa": 3520, "tag": 1280}
DEV_ROWS = 200


def _write_split(task: str, directory: Path, name: str, rows: int, seed: int) -> Path:
    if task == "classify":
        table = [{"sentence": row["text"], "label": row["label"]} for row in synthetic.sentiment(rows, seed, pairs=0)]
        return synthetic.write_table(directory / f"{name}.tsv", table)
    if task == "qa":
        return synthetic.write_json(directory / f"{name}.json", synthetic.squad(rows, seed))
    return synthetic.write_conll(directory / f"{name}.conll", synthetic.tagged(rows, seed))


def write_example(directory: Path, task: str = "classify") -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    return [
        _write_split(task, directory, "train", TRAIN_ROWS[task], SEED),
        _write_split(task, directory, "dev", DEV_ROWS, SEED + 1),
        make_checkpoint(directory / "base", "discriminate", seed=SEED, **DEMO_SHAPE, **NO_DROPOUT),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune.example", description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--task", choices=sorted(TRAIN_ROWS), default="classify", help="default: classify")
    args = parser.parse_args(argv)
    for path in write_example(args.directory, args.task):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
