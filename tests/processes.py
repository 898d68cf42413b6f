"""Stopping the processes the tests start (servers, nginx)."""

from __future__ import annotations

import signal
import subprocess


def terminate(process: subprocess.Popen[bytes], timeout_s: float, kill_wait_s: float = 10.0) -> int:
    """SIGTERM (a graceful stop), then SIGKILL if it has not exited within `timeout_s`; the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(kill_wait_s)
    return process.returncode
