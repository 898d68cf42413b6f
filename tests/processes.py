"""Stopping the processes the tests start (servers, nginx): the harness's own `terminate`
(loadtests/servers.py, shared with the benches)."""

from __future__ import annotations

from loadtests.servers import terminate

__all__ = ["terminate"]
