"""Each peer in its own virtual environment under the bench's cache, installed with pip from the
package index (pinned versions), once: a marker file records what was installed, and a venv whose
marker differs from what is asked is built again from scratch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from loadtests.peers import venv_python

MARKER = "electra-bench-installed.json"


class PeerUnavailable(Exception):
    """A peer that cannot be installed or run here; the message is the reason the report shows."""


def wanted(steps: list[list[str]]) -> dict[str, object]:
    return {"python": sys.version.split()[0], "steps": steps}


def installed(root: Path, steps: list[list[str]]) -> bool:
    marker = Path(root) / MARKER
    if not marker.is_file() or not venv_python(root).exists():
        return False
    try:
        return json.loads(marker.read_text()) == wanted(steps)
    except ValueError:
        return False


def ensure_venv(
    root: Path,
    steps: list[list[str]],
    *,
    probe: str,
    log: Callable[[str], None],
    timeout_s: float = 1800.0,
) -> Path:
    """The venv's python, with `steps` installed (each a `pip install` argument list, in order) and
    `import <probe>` working; PeerUnavailable with the reason otherwise."""
    root = Path(root)
    python = venv_python(root)
    if not installed(root, steps):
        if root.exists():
            shutil.rmtree(root)
        root.parent.mkdir(parents=True, exist_ok=True)
        log(f"installing into {root} (once): " + "; ".join(" ".join(s) for s in steps))
        _run([sys.executable, "-m", "venv", str(root)], "creating the venv", timeout_s=120, log_file=None)
        install_log = root / "install.log"
        for step in steps:
            _run(
                [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *step],
                "pip install " + " ".join(step),
                timeout_s=timeout_s,
                log_file=install_log,
            )
        (root / MARKER).write_text(json.dumps(wanted(steps)))
    _run([str(python), "-c", f"import {probe}"], f"import {probe}", timeout_s=300, log_file=None)
    return python


def _run(command: list[str], what: str, *, timeout_s: float, log_file: Path | None) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise PeerUnavailable(f"{what}: no result within {timeout_s:.0f}s") from exc
    except OSError as exc:
        raise PeerUnavailable(f"{what}: {exc}") from exc
    if log_file is not None:
        with log_file.open("a") as f:
            f.write(f"$ {' '.join(command)}\n{done.stdout}{done.stderr}\n")
    if done.returncode != 0:
        raise PeerUnavailable(f"{what} failed ({done.returncode}): {last_error(done.stderr or done.stdout)}")


def last_error(output: str, limit: int = 400) -> str:
    """The telling part of a failed command's output: its last lines that are not pip's location
    warnings, on one line."""
    lines = [
        line.strip()
        for line in output.splitlines()
        if line.strip() and not line.startswith("WARNING: Location") and "is ignored" not in line
    ]
    text = " | ".join(lines[-4:])
    return text if len(text) <= limit else "..." + text[-limit:]
