"""The repository scanner: flat and versioned layouts, version policies, and what is wrong with a
model directory reported as that model's problem (never an exception for the whole repository)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.core.repository import VersionPolicy, scan


def model(root: Path, *parts: str, manifest: bool = True) -> Path:
    directory = root.joinpath(*parts)
    directory.mkdir(parents=True, exist_ok=True)
    if manifest:
        (directory / "manifest.json").write_text("{}")
    return directory


def test_flat_layout_is_version_1(tmp_path: Path) -> None:
    model(tmp_path, "flat")
    found = scan(tmp_path)
    assert list(found) == ["flat"]
    assert found["flat"].versions == {1: tmp_path / "flat"}
    assert [(s.name, s.version, s.path) for s in found["flat"].selected()] == [("flat", "1", tmp_path / "flat")]


def test_versioned_layout_and_the_default_policy_latest_one(tmp_path: Path) -> None:
    for version in ("1", "2", "10"):
        model(tmp_path, "m", version)
    found = scan(tmp_path)["m"]
    assert sorted(found.versions) == [1, 2, 10]  # numbers, not strings: 10 is the newest
    assert [s.version for s in found.selected()] == ["10"]
    assert [s.version for s in scan(tmp_path, VersionPolicy("latest", num_versions=2))["m"].selected()] == ["2", "10"]
    assert [s.version for s in scan(tmp_path, VersionPolicy("all"))["m"].selected()] == ["1", "2", "10"]


def test_a_models_config_chooses_its_policy(tmp_path: Path) -> None:
    for version in ("1", "2", "3"):
        model(tmp_path, "m", version)
    (tmp_path / "m" / "config.json").write_text(json.dumps({"version_policy": {"specific": {"versions": [1, 3, 7]}}}))
    found = scan(tmp_path)["m"]
    assert [s.version for s in found.selected()] == ["1", "3"]
    assert found.missing() == [7]
    assert found.policy.describe() == {"specific": {"versions": [1, 3, 7]}}


def test_versions_without_a_manifest_are_not_versions_yet(tmp_path: Path) -> None:
    model(tmp_path, "m", "1")
    model(tmp_path, "m", "2", manifest=False)  # an export still writing (or a copy in progress)
    model(tmp_path, "m", "notes", manifest=False)
    model(tmp_path, "m", "0")  # versions start at 1
    assert [s.version for s in scan(tmp_path)["m"].selected()] == ["1"]


@pytest.mark.parametrize(
    ("layout", "fragment"),
    [
        ({"manifest.json": "{}", "1/manifest.json": "{}"}, "use one layout"),
        ({"1/other.txt": "x"}, "none holds a manifest.json"),
        ({"1/manifest.json": "{}", "config.json": "{not json"}, "config.json is not usable"),
        ({"1/manifest.json": "{}", "config.json": '{"version_policy": {"newest": {}}}'}, "unknown version_policy"),
        ({"1/manifest.json": "{}", "config.json": '{"version_policy": {"latest": {"num_versions": 0}}}'}, ">= 1"),
    ],
)
def test_bad_model_directories_are_that_models_problem(tmp_path: Path, layout: dict[str, str], fragment: str) -> None:
    for relative, text in layout.items():
        path = tmp_path / "bad" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    model(tmp_path, "good")
    found = scan(tmp_path)
    assert set(found) == {"bad", "good"}
    assert any(fragment in problem for problem in found["bad"].problems), found["bad"].problems
    assert not found["good"].problems


def test_hidden_and_empty_directories_are_ignored(tmp_path: Path) -> None:
    model(tmp_path, ".staging-x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("x")
    assert scan(tmp_path) == {}
    assert scan(tmp_path / "missing") == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("latest", VersionPolicy("latest", 1)),
        ("latest:3", VersionPolicy("latest", 3)),
        ("all", VersionPolicy("all")),
        ("specific:3,1", VersionPolicy("specific", versions=(1, 3))),
    ],
)
def test_the_flags_policy_forms(text: str, expected: VersionPolicy) -> None:
    assert VersionPolicy.parse(text) == expected


@pytest.mark.parametrize("text", ["newest", "latest:x", "latest:0", "specific:", "specific:0", "all:2"])
def test_bad_policy_flags_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="policy"):
        VersionPolicy.parse(text)
