"""A batcher's health: model runs failing in a row (readiness), a probe that finds when the model
works again, and how often its loop may die before it counts as dead (liveness)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from server.core.batching.execution import Outcome, is_out_of_memory

log = logging.getLogger("electra.batcher")

# Loop restarts allowed within RESTART_WINDOW_S before the batcher counts as dead.
MAX_RESTARTS = 3
RESTART_WINDOW_S = 60.0


class Supervision:
    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int,
        probe_interval_s: float,
        on_failure: Callable[[str], None],
    ) -> None:
        self.name = name
        self.failure_threshold = failure_threshold
        self.probe_interval_s = probe_interval_s
        self._on_failure = on_failure
        self.consecutive_failures = 0
        self.died = False
        self._restarts: deque[float] = deque()
        self._probe: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        return not self.died and self.consecutive_failures < self.failure_threshold

    def ran(self, outcome: Outcome, probe: Callable[[], Awaitable[None]]) -> None:
        """After a batch: a batch of which no row succeeded counts as a failed run; past the
        threshold, `probe` is tried every `probe_interval_s` until it succeeds."""
        if all(e is not None for e in outcome.errors):
            self.consecutive_failures += 1
            if self.consecutive_failures == self.failure_threshold:
                log.error(
                    "batcher %s: %d model runs failed in a row: not ready until a run succeeds",
                    self.name,
                    self.consecutive_failures,
                )
                if self._probe is None or self._probe.done():
                    self._probe = asyncio.get_running_loop().create_task(
                        self._probe_until_healthy(probe), name=f"probe-{self.name}"
                    )
        elif self.consecutive_failures:
            if self.consecutive_failures >= self.failure_threshold:
                log.info("batcher %s: model runs succeed again", self.name)
            self.consecutive_failures = 0

    async def _probe_until_healthy(self, probe: Callable[[], Awaitable[None]]) -> None:
        """While unhealthy, try a one-row run now and then: traffic may have stopped (readiness is
        false), so nothing else would ever show that the model works again."""
        while not self.healthy and not self.died:
            await asyncio.sleep(self.probe_interval_s)
            if self.healthy or self.died:
                return
            try:
                await probe()
            except Exception as exc:
                self._on_failure("oom" if is_out_of_memory(exc) else "error")
                continue
            log.info("batcher %s: a probe run succeeded: ready again", self.name)
            self.consecutive_failures = 0

    def may_restart(self) -> bool:
        """The loop died: whether it may start again (a few times a minute), else it is dead."""
        now = time.monotonic()
        while self._restarts and now - self._restarts[0] > RESTART_WINDOW_S:
            self._restarts.popleft()
        if len(self._restarts) < MAX_RESTARTS:
            self._restarts.append(now)
            return True
        self.died = True
        return False

    def stop(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
