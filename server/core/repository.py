"""The model repository on disk: which models and versions exist, and which of them to serve.

Two layouts, mixed freely in one repository:

    models/NAME/manifest.json            a flat model: version 1
    models/NAME/3/manifest.json          versioned: one directory per version, named by its number
    models/NAME/config.json              optional: {"version_policy": ...} for a versioned model

A version policy (Triton's names and JSON shape) chooses the versions served:
`{"latest": {"num_versions": N}}` (the default, N = 1), `{"all": {}}`, or
`{"specific": {"versions": [1, 3]}}`. A directory without a manifest is not a version yet (an
export in progress writes it elsewhere and renames it in); anything else odd is reported as a
problem of that model, never a reason to stop serving the others.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from server.core.folders import unreadable
from server.core.manifest import MANIFEST_FILE

CONFIG_FILE = "config.json"
FLAT_VERSION = "1"


@dataclass(frozen=True)
class VersionPolicy:
    kind: Literal["latest", "all", "specific"] = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    @classmethod
    def from_json(cls, value: Any) -> VersionPolicy:
        """Triton's `version_policy` JSON; raises ValueError with a readable reason."""
        if not isinstance(value, dict) or len(value) != 1:
            raise ValueError('version_policy must be one of {"latest": {...}}, {"all": {}}, {"specific": {...}}')
        ((kind, body),) = value.items()
        body = body or {}
        if not isinstance(body, dict):
            raise ValueError(f"version_policy.{kind} must be an object")
        if kind == "all":
            return cls("all")
        if kind == "latest":
            n = body.get("num_versions", 1)
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError("version_policy.latest.num_versions must be an integer >= 1")
            return cls("latest", num_versions=n)
        if kind == "specific":
            versions = body.get("versions")
            if (
                not isinstance(versions, list)
                or not versions
                or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in versions)
            ):
                raise ValueError("version_policy.specific.versions must be a non-empty list of integers >= 1")
            return cls("specific", versions=tuple(sorted(set(versions))))
        raise ValueError(f"unknown version_policy {kind!r}: expected latest, all or specific")

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        """The flag's form: `latest`, `latest:N`, `all`, or `specific:1,3`."""
        kind, _, rest = text.strip().partition(":")
        try:
            if kind == "latest":
                return cls.from_json({"latest": {"num_versions": int(rest) if rest else 1}})
            if kind == "all" and not rest:
                return cls("all")
            if kind == "specific":
                return cls.from_json({"specific": {"versions": [int(v) for v in rest.split(",") if v.strip()]}})
        except ValueError as exc:
            raise ValueError(f"bad version policy {text!r}: {exc}") from exc
        raise ValueError(f"bad version policy {text!r}: expected latest[:N], all or specific:V[,V...]")

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve among those on disk, ascending."""
        ordered = sorted(available)
        if self.kind == "all":
            return ordered
        if self.kind == "latest":
            return ordered[-self.num_versions :]
        return [v for v in ordered if v in self.versions]

    def describe(self) -> dict[str, Any]:
        if self.kind == "all":
            return {"all": {}}
        if self.kind == "latest":
            return {"latest": {"num_versions": self.num_versions}}
        return {"specific": {"versions": list(self.versions)}}


@dataclass(frozen=True)
class ModelSource:
    """One version of one model on disk."""

    name: str
    version: str
    path: Path


@dataclass
class RepositoryModel:
    """What the repository holds of one model: its versions on disk, the policy, what is wrong."""

    name: str
    versions: dict[int, Path] = field(default_factory=dict)
    policy: VersionPolicy = field(default_factory=VersionPolicy)
    problems: list[str] = field(default_factory=list)

    def selected(self) -> list[ModelSource]:
        """The versions the policy serves, oldest first."""
        return [ModelSource(self.name, str(v), self.versions[v]) for v in self.policy.select(list(self.versions))]

    def missing(self) -> list[int]:
        """Versions a specific policy names that are not on disk."""
        if self.policy.kind != "specific":
            return []
        return [v for v in self.policy.versions if v not in self.versions]


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def scan(repository: Path, default_policy: VersionPolicy | None = None) -> dict[str, RepositoryModel]:
    """Every model directory of the repository (hidden ones skipped), by name."""
    repository = Path(repository)
    default_policy = default_policy or VersionPolicy()
    models: dict[str, RepositoryModel] = {}
    if not repository.is_dir():
        return models
    problem = unreadable(repository)
    if problem is not None:
        raise PermissionError(problem)
    for directory in sorted(p for p in repository.iterdir() if p.is_dir() and not _is_hidden(p)):
        model = _scan_model(directory, default_policy)
        if model is not None:
            models[model.name] = model
    return models


def _scan_model(directory: Path, default_policy: VersionPolicy) -> RepositoryModel | None:
    model = RepositoryModel(directory.name, policy=default_policy)
    problem = unreadable(directory)
    if problem is not None:
        model.problems.append(problem)
        return model
    numbered = sorted(
        (p for p in directory.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0),
        key=lambda p: int(p.name),
    )
    flat = (directory / MANIFEST_FILE).is_file()
    if flat and numbered:
        model.problems.append(
            f"{directory.name} has both a {MANIFEST_FILE} and version directories "
            f"({', '.join(p.name for p in numbered)}): use one layout"
        )
        return model
    if flat:
        model.versions[int(FLAT_VERSION)] = directory
        return model
    if not numbered:
        return None  # not a model (yet): an export writes elsewhere and renames in
    for path in numbered:
        problem = unreadable(path)
        if problem is not None:
            model.problems.append(problem)
        elif (path / MANIFEST_FILE).is_file():
            model.versions[int(path.name)] = path
    config = directory / CONFIG_FILE
    if config.is_file():
        try:
            body = json.loads(config.read_text(encoding="utf-8"))
            if not isinstance(body, dict):
                raise ValueError("it must be a JSON object")
            if "version_policy" in body:
                model.policy = VersionPolicy.from_json(body["version_policy"])
        except (OSError, ValueError) as exc:
            model.problems.append(f"{directory.name}/{CONFIG_FILE} is not usable: {exc}")
    if not model.versions:
        model.problems.append(f"{directory.name} has version directories but none holds a {MANIFEST_FILE} yet")
    return model


def version_policy(repository: Path, default_policy: VersionPolicy, name: str) -> VersionPolicy:
    """The policy a model's versions are selected by (its config's, else the server's default)."""
    model = scan(repository, default_policy).get(name)
    return model.policy if model else default_policy
