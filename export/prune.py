"""`electra-export --prune --precision P --output REPO`: keep only the named variants in a repository.

An image or a volume should carry what it serves: a CPU server serves fp32 (or int8), a GPU server
fp16, and every other variant is weight files nobody reads (43% of the demo repository). Pruning
removes the other variants' files and their manifest entries, every version of every model; the
export-time measurements (parity, evaluation scores) stay in the manifest as a record.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from server.core.manifest import Manifest
from server.core.repository import scan
from toolchain.errors import ExportError


def prune_repository(repository: Path, keep: Collection[str]) -> list[str]:
    """Remove every variant not in `keep`; one line per model version saying what it kept.

    Checks every model before touching any, so that a refusal leaves the repository as it was."""
    plans: list[tuple[Path, Manifest, list[str]]] = []
    for name, model in sorted(scan(Path(repository)).items()):
        if model.problems:
            raise ExportError(f"{name}: {'; '.join(model.problems)}")
        for version, folder in sorted(model.versions.items()):
            manifest = Manifest.read(folder)
            kept = [p for p in manifest.variants if p in keep]
            if not kept:
                raise ExportError(
                    f"{name} (version {version}) has only {', '.join(manifest.variants)}: "
                    f"pruning to {', '.join(keep)} would leave it nothing to serve"
                )
            plans.append((folder, manifest, [p for p in manifest.variants if p not in keep]))
    if not plans:
        raise ExportError(f"no models in {repository}")
    lines = []
    for folder, manifest, dropped in plans:
        removed = [manifest.variants.pop(precision) for precision in dropped]  # type: ignore[call-overload]
        if removed:
            # The manifest first: from then on nothing names the files, so none is read while it goes.
            manifest.write(folder)
        for variant in removed:
            for file in (variant.file, variant.data_file):
                if file:
                    (folder / file).unlink(missing_ok=True)
        summary = f"{folder}: kept {', '.join(manifest.variants)}"
        lines.append(summary + (f", removed {', '.join(dropped)}" if dropped else ""))
    return lines
