"""Model folders that whoever serves them can read.

An export stages each model in a `tempfile.mkdtemp` folder, which is owner-only (0700) whatever the
umask, and renames it into place; served by another user (an image that exports as root and serves
as uid 10001, a shared volume) the folder could not even be listed. Staged folders therefore get the
mode the umask gives any new folder, and a folder the server cannot read is named in one line.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def current_umask() -> int:
    # The only portable way to read the umask is to set it; this runs in CLIs, not in a server's threads.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def open_to_umask(folder: Path) -> None:
    """Give a staged folder (mkdtemp's 0700) the mode an ordinary mkdir would have given it."""
    folder.chmod(0o777 & ~current_umask())


def user_name() -> str:
    uid = os.geteuid()
    try:
        import pwd

        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def unreadable(folder: Path) -> str | None:
    """Why this process cannot list and enter `folder`, or None when it can."""
    if os.access(folder, os.R_OK | os.X_OK):
        return None
    try:
        info = folder.stat()
    except OSError as exc:
        return f"cannot read {folder}: {exc.strerror}"
    return (
        f"cannot read {folder} as {user_name()}: it is mode {stat.filemode(info.st_mode)} owned by uid "
        f"{info.st_uid}; make it readable (chmod -R a+rX {folder}) or serve as its owner"
    )
