"""The models the bench runs: the demo repository, or a classifier of a named shape (random
weights, seeded) built and exported by the project's own export stage.

    python -m loadtests.models repository --shape large --output DIR [--precisions fp16]
    python -m loadtests.models checkpoint --shape demo --output DIR   # for the naive baseline

Runs as a child process of the bench: the export imports torch, the bench itself never does.
`large` is ELECTRA-large's shape (BERT-large's: hidden 1024, 24 layers, 16 heads, intermediate
4096, 335M parameters); `small` is ELECTRA-small's (the demo shape) and `tiny` a 2-layer toy,
both for rehearsing the large path on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from export.demo import DEMO_SHAPE

LABELS = ["NEGATIVE", "POSITIVE"]
SEED = 2  # demo-classify's seed: the `demo` checkpoint has exactly demo-classify's weights

SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {
        "embedding_size": 64,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 128,
        "max_position_embeddings": 512,
        "initializer_range": 0.02,
    },
    "small": DEMO_SHAPE,  # the demo models' shape (google/electra-small-discriminator's)
    "large": {
        "embedding_size": 1024,
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        "max_position_embeddings": 512,
        "initializer_range": 0.02,
    },
}


def model_name(shape: str) -> str:
    return f"bench-{shape}-classify"


def shape_of(shape: str) -> dict[str, Any]:
    if shape == "demo":
        return dict(DEMO_SHAPE)
    return dict(SHAPES[shape])


def build_checkpoint(shape: str, output: Path) -> Path:
    """The Hugging Face checkpoint (what the naive baseline loads); idempotent."""
    from export.synthetic import make_checkpoint

    output = Path(output)
    if (output / "config.json").exists() and (output / "model.safetensors").exists():
        return output
    staging = Path(tempfile.mkdtemp(prefix=".ckpt-", dir=output.parent if output.parent.exists() else None))
    try:
        make_checkpoint(staging, "classify", seed=SEED, labels=LABELS, **shape_of(shape))
        if output.exists():
            shutil.rmtree(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), str(output))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output


def build_repository(shape: str, output: Path, precisions: list[str], checkpoint: Path | None = None) -> Path:
    """A model repository holding one classifier of `shape`, exported with the parity gate; idempotent."""
    from export.exporter import export_checkpoint

    output = Path(output)
    name = model_name(shape)
    manifest = output / name / "manifest.json"
    if manifest.exists() and set(precisions) <= set(json.loads(manifest.read_text())["variants"]):
        return output
    checkpoint = build_checkpoint(shape, checkpoint or output.parent / f"{name}-checkpoint")
    export_checkpoint(str(checkpoint), output, name=name, precisions=precisions)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("repository", "checkpoint"))
    parser.add_argument("--shape", required=True, choices=("demo", *SHAPES))
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--precisions", default="fp32", help="comma list (repository only)")
    parser.add_argument("--checkpoint", type=Path, help="where the checkpoint is kept (repository only)")
    args = parser.parse_args(argv)
    if args.what == "checkpoint":
        print(build_checkpoint(args.shape, args.output))
    else:
        if args.shape == "demo":
            parser.error("the demo repository comes from `electra-export --demo`; use a named shape here")
        precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
        print(build_repository(args.shape, args.output, precisions, args.checkpoint))
    return 0


if __name__ == "__main__":
    sys.exit(main())
