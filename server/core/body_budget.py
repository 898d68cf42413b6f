"""Bytes of request bodies one API process holds at a time (--max-body-buffer-mb).

Every body is bounded by --max-request-bytes, but 32 clients sending 4 MB bodies at once are
130 MB of raw bytes before any work, and their parsed texts as much again. A body is counted from
the moment its size is known (its declared length, or its bytes as they arrive) until its request
is answered; a large body that would take the process past the cap is refused at once with 429
and Retry-After (413 when the whole buffer could never hold it), before it is read further or
parsed. Small bodies are counted but never refused:
a short request must get through while large ones fill the buffer.
"""

from __future__ import annotations

from server.core.errors import ErrorKind, ServeError

# Bodies up to this size always pass (they still count towards the cap).
SMALL_BODY_BYTES = 64 * 1024
# What a body costs in memory while its request runs, in multiples of its size: its bytes as they
# arrive (a growing buffer, then its copy), the parsed texts, their UTF-8 form for the window
# bound, and a protocol's own copies (KServe v2 tensors). Measured with 4 MB bodies: 17 v2 HTTP
# bodies at once took 270 MB above rest (4 each); charged 4 times, 3 bodies took 60-85 MB (5-7).
COPIES = 6
# A body from this size on leaves enough freed heap behind (its bytes, its parsed texts, their
# tokens) that the idle process should give it back.
LARGE_BODY_BYTES = 1024 * 1024


class BodyBudget:
    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.held_bytes = 0
        self.large_seen = False  # a large body arrived since the service last trimmed the heap

    def hold(self) -> BodyHold:
        """One request's share, given back by `release()` when the request is answered."""
        return BodyHold(self)

    def _take(self, size: int, total: int) -> None:
        if total > SMALL_BODY_BYTES and total * COPIES > self.limit_bytes:
            # Waiting would not help: the buffer could never hold this body.
            raise ServeError(
                ErrorKind.TOO_LARGE,
                f"a request body of at least {total} bytes (counted {COPIES} times: its parsed copies) is "
                f"more than the whole buffer of {self.limit_bytes} bytes (--max-body-buffer-mb)",
            )
        if total > SMALL_BODY_BYTES and self.held_bytes + size > self.limit_bytes:
            raise ServeError(
                ErrorKind.OVERLOADED,
                f"the server is holding {self.held_bytes} bytes for request bodies; this body of at least "
                f"{total} bytes (counted {COPIES} times: its parsed copies) would pass its buffer of "
                f"{self.limit_bytes} bytes (--max-body-buffer-mb)",
                retry_after_s=1.0,
            )
        self.held_bytes += size
        self.large_seen = self.large_seen or total >= LARGE_BODY_BYTES


class BodyHold:
    """What one request holds of the budget. Single-threaded, like the event loop that uses it."""

    __slots__ = ("_budget", "held_bytes")

    def __init__(self, budget: BodyBudget) -> None:
        self._budget = budget
        self.held_bytes = 0

    def grow_to(self, total: int) -> None:
        """The body is (or is declared to be) `total` bytes: take what is not held yet, or refuse."""
        charged = total * COPIES
        if charged > self.held_bytes:
            self._budget._take(charged - self.held_bytes, total)
            self.held_bytes = charged

    def release(self) -> None:
        self._budget.held_bytes -= self.held_bytes
        self.held_bytes = 0

    def __enter__(self) -> BodyHold:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()
