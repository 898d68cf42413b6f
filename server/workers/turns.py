"""Sending once per turn of the event loop: what the requests of one busy moment have to say
leaves as one message (the cost of a message is shared by the requests that fill it)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class OncePerTurn:
    """`soon()` asks for `flush` to run at the end of this turn of the event loop, once however
    often it is asked."""

    def __init__(self, flush: Callable[[], None]) -> None:
        self._flush = flush
        self._scheduled = False

    def soon(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._run)

    def _run(self) -> None:
        self._scheduled = False
        self._flush()
