"""A model folder the server cannot read is one line naming the folder and the user, and an export
publishes folders anyone the umask allows can read (mkdtemp stages them owner-only)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from server.core.folders import open_to_umask, unreadable
from server.core.repository import scan

NOBODY = 65534


def _owner_only_model(root: Path) -> Path:
    folder = root / "private"
    folder.mkdir()
    (folder / "manifest.json").write_text("{}")
    folder.chmod(0o700)
    return folder


def _scan_problems_as(uid: int, repository: Path) -> str:
    """The scan's problems as another user sees them: a child that imports as root (the interpreter
    may live in root's home) and then drops to `uid`."""
    code = (
        "import os, pwd, sys; from server.core.repository import scan; "
        f"os.setgroups([]); os.setgid({uid}); os.setuid({uid}); "
        "print('; '.join(p for m in scan(sys.argv[1]).values() for p in m.problems))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(repository)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        check=True,
    )
    return result.stdout.strip()


def test_a_folder_another_user_exported_owner_only_is_named_with_the_user() -> None:
    with tempfile.TemporaryDirectory() as name:
        repository = Path(name)
        repository.chmod(0o755)
        folder = _owner_only_model(repository)
        if os.geteuid() == 0:
            problem = _scan_problems_as(NOBODY, repository)
            assert problem.startswith(f"cannot read {folder} as uid {NOBODY}"), problem
        else:  # an owner cannot be locked out by 0700; mode 000 shows the same line
            folder.chmod(0)
            problem = "; ".join(scan(repository)["private"].problems)
            assert problem.startswith(f"cannot read {folder} as uid {os.geteuid()}"), problem
            folder.chmod(0o700)
        assert "mode drwx------" in problem or "mode d---------" in problem
        assert f"chmod -R a+rX {folder}" in problem
        assert "\n" not in problem


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_a_staged_folder_gets_the_umasks_mode(mask: int, tmp_path: Path) -> None:
    staged = Path(tempfile.mkdtemp(dir=tmp_path))
    assert staged.stat().st_mode & 0o777 == 0o700
    previous = os.umask(mask)
    try:
        open_to_umask(staged)
    finally:
        os.umask(previous)
    assert staged.stat().st_mode & 0o777 == 0o777 & ~mask
    assert unreadable(staged) is None
