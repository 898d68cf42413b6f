"""No module imports another module's private names (`from x import _y`): what a module keeps to
itself may change without notice, and code outside it (other modules, the tests, the benches)
must go through what it offers. Checked over every Python file of the repository."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("server", "export", "finetune", "evaluation", "toolchain", "proto", "loadtests", "tests")


def python_files() -> list[Path]:
    files = [p for package in PACKAGES if (ROOT / package).is_dir() for p in (ROOT / package).rglob("*.py")]
    return [p for p in files if "_pb2" not in p.name]


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_module_imports_a_private_name() -> None:
    found = []
    for path in python_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                found += [
                    f"{path.relative_to(ROOT)}:{node.lineno}: from {node.module} import {alias.name}"
                    for alias in node.names
                    if private(alias.name)
                ]
            elif isinstance(node, ast.Import | ast.ImportFrom):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                found += [
                    f"{path.relative_to(ROOT)}:{node.lineno}: import {m}"
                    for m in modules
                    if any(private(part) for part in m.split("."))
                ]
    assert not found, "private names imported from another module:\n" + "\n".join(found)


def test_the_check_sees_what_it_looks_for() -> None:
    assert len(python_files()) > 100
    assert private("_poll") and not private("__init__") and not private("poll")
