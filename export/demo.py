"""The four embedded demo models: small ELECTRA shapes, random weights from fixed seeds, the real vocab.

Their outputs are meaningless; they exist so that the server runs and is tested anywhere, offline.
`electra-export --demo` writes byte-identical files on every run: fixed seeds, single-threaded
reference and parity runs, and no timestamps anywhere.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from export.exporter import export_checkpoint
from export.synthetic import CONLL_LABELS, make_checkpoint
from server.core.manifest import Manifest

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

DEMO_MODELS: dict[str, dict] = {
    "demo-discriminator": {"task": "discriminate", "seed": 1},
    "demo-classify": {"task": "classify", "seed": 2, "labels": ["NEGATIVE", "POSITIVE"]},
    "demo-qa": {"task": "qa", "seed": 3},
    "demo-tag": {"task": "tag", "seed": 4, "labels": CONLL_LABELS},
}
DEMO_PRECISIONS = ("fp32", "fp16", "int8")


def write_demo_repository(output: Path, quiet: bool = False) -> list[Manifest]:
    manifests = []
    with tempfile.TemporaryDirectory(prefix="electra-demo-") as scratch:
        for name, spec in DEMO_MODELS.items():
            checkpoint = make_checkpoint(
                Path(scratch) / name, spec["task"], seed=spec["seed"], labels=spec.get("labels"), **DEMO_SHAPE
            )
            manifest, _ = export_checkpoint(
                str(checkpoint),
                Path(output),
                name=name,
                precisions=DEMO_PRECISIONS,
                deterministic=True,
                quiet=quiet,
            )
            # The source is a scratch directory; record what the model really is instead.
            manifest.source.model = f"electra-serve demo ({spec['task']}, seed {spec['seed']})"
            manifest.write(Path(output) / name)
            manifests.append(manifest)
    return manifests
