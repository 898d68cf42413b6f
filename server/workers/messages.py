"""The messages between the API workers and the model owner: one struct per message, told apart by
its `op` field, encoded as JSON by msgspec (and checked as they are decoded: a malformed message is
an error at the door, not a KeyError somewhere in a handler). Row and output arrays travel beside
the header as raw frames (see `wire`).

Worker -> owner: Hello, Submit, Cancel, Release, Control, Stats, StatsReply.
Owner -> worker: Table, Results, Errors, Reply, StatsQuery.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class Message(msgspec.Struct, tag_field="op", forbid_unknown_fields=False):
    pass


# -- worker -> owner --------------------------------------------------------------------------


class Hello(Message, tag="hello"):
    """A worker's first message: the owner sends it the table."""

    pid: int = 0


class SubmittedRequest(msgspec.Struct, array_like=True):
    id: int
    model: str
    version: str
    deadline: float | None  # time.monotonic(): both processes share the clock
    rows: int  # how many of the message's rows are this request's


class Submit(Message, tag="submit"):
    """Requests for versions' batchers; their rows follow as three frames (`wire.pack_rows`)."""

    requests: list[SubmittedRequest]


class Cancel(Message, tag="cancel"):
    """The worker gave these requests up (client gone, deadline): their rows leave the queue."""

    ids: list[int]


class Release(Message, tag="release"):
    """The worker holds no request on this retiring version any more."""

    model: str
    version: str
    path: str


class Control(Message, tag="control"):
    """A repository operation asked through a worker; answered by a Reply with the same id."""

    id: int
    action: Literal["load", "unload", "index"]
    name: str = ""
    ready: bool = False  # index: ready versions only


class Stats(Message, tag="stats"):
    """Triton's statistics summed over every worker; answered by a Reply with the same id."""

    id: int


class StatsReply(Message, tag="stats_reply"):
    """A worker's own statistics, for a StatsQuery."""

    query: int
    stats: list[dict[str, Any]]


# -- owner -> worker --------------------------------------------------------------------------


class VersionInfo(msgspec.Struct):
    """What the owner says of one loaded version."""

    path: str
    ready: bool = True
    alive: bool = True
    retiring: bool = False
    precision: str = "fp32"
    device: str = "cpu"
    providers: list[str] = msgspec.field(default_factory=list)
    sequence_outputs: list[str] = msgspec.field(default_factory=list)
    policy: dict[str, Any] = msgspec.field(default_factory=dict)
    executions: int = 0
    queue_depth: int = 0


class ModelEntry(msgspec.Struct):
    status: dict[str, tuple[str, str]]  # version -> (state, reason)
    versions: dict[str, VersionInfo]  # the loaded ones


class Table(Message, tag="table"):
    """The owner's models, on every change and every half second (it is the owner's heartbeat too)."""

    epoch: int
    loaded: bool  # start-up loading finished
    draining: bool
    load_error: str | None
    models: dict[str, ModelEntry]


class Answered(msgspec.Struct, array_like=True):
    id: int
    queue_seconds: float
    inference_seconds: float
    lengths: list[int]  # its rows' lengths: how to cut the output frames


class Results(Message, tag="results"):
    """Answered requests whose outputs share one shape (`spec`); outputs follow as frames."""

    spec: list[tuple[str, bool, list[int]]]  # (output name, is a sequence output, per-row tail shape)
    results: list[Answered]


class Failed(msgspec.Struct, array_like=True):
    id: int
    kind: str  # an ErrorKind name
    message: str
    retry_after_s: float | None = None


class Errors(Message, tag="errors"):
    errors: list[Failed]


class Reply(Message, tag="reply"):
    """The answer to a Control or a Stats."""

    id: int
    ok: bool
    result: Any = None
    stats: list[dict[str, Any]] = msgspec.field(default_factory=list)
    load_error: bool = False  # a Control load failed: `message` says why
    kind: str = ""  # an ErrorKind name, when not ok
    message: str = ""
    retry_after_s: float | None = None


class StatsQuery(Message, tag="stats_query"):
    query: int


ToOwner = Hello | Submit | Cancel | Release | Control | Stats | StatsReply
ToWorker = Table | Results | Errors | Reply | StatsQuery

_encoder = msgspec.json.Encoder()
_to_owner = msgspec.json.Decoder(ToOwner)
_to_worker = msgspec.json.Decoder(ToWorker)


def encode(message: Message) -> bytes:
    return _encoder.encode(message)


def decode_to_owner(data: Any) -> ToOwner:
    """Raises msgspec.DecodeError (a subclass of ValueError) for anything that is not a message."""
    return _to_owner.decode(data)


def decode_to_worker(data: Any) -> ToWorker:
    return _to_worker.decode(data)
