"""The worker-owner messages: every type goes through its direction's decoder and comes back
equal; what is not a message of that direction is refused at the door."""

from __future__ import annotations

import msgspec
import pytest

from server.workers import messages as m

INFO = m.VersionInfo(
    path="/models/clf/1",
    ready=True,
    alive=True,
    retiring=False,
    precision="int8",
    device="cpu",
    providers=["CPUExecutionProvider"],
    sequence_outputs=["logits"],
    policy={"max_batch_size": 8},
    executions=3,
    queue_depth=2,
)

TO_OWNER: list[m.Message] = [
    m.Hello(pid=42),
    m.Submit([m.SubmittedRequest(1, "clf", "1", 12.5, 2), m.SubmittedRequest(2, "tag", "3", None, 1)]),
    m.Cancel([1, 2, 3]),
    m.Release("clf", "1", "/models/clf/1"),
    m.Control(7, "load", name="clf"),
    m.Control(8, "index", ready=True),
    m.Stats(9),
    m.StatsReply(4, [{"name": "clf", "version": "1"}]),
]

TO_WORKER: list[m.Message] = [
    m.Table(
        5, True, False, None, {"clf": m.ModelEntry({"1": ("READY", ""), "2": ("UNAVAILABLE", "bad")}, {"1": INFO})}
    ),
    m.Results([("logits", True, [2]), ("pooled", False, [4])], [m.Answered(1, 0.001, 0.002, [3, 1])]),
    m.Errors([m.Failed(1, "OVERLOADED", "queue full", 1.0), m.Failed(2, "INTERNAL", "boom")]),
    m.Reply(7, True, result=["1", "2"]),
    m.Reply(8, False, load_error=True, message="version 2: bad manifest"),
    m.Reply(9, False, kind="NOT_FOUND", message="no such model", retry_after_s=None),
    m.Reply(10, True, stats=[{"name": "clf"}]),
    m.StatsQuery(4),
]


@pytest.mark.parametrize("message", TO_OWNER, ids=lambda x: type(x).__name__)
def test_to_owner_round_trip(message: m.Message) -> None:
    assert m.decode_to_owner(m.encode(message)) == message
    with pytest.raises(msgspec.DecodeError):
        m.decode_to_worker(m.encode(message))  # a worker never takes a message meant for the owner


@pytest.mark.parametrize("message", TO_WORKER, ids=lambda x: type(x).__name__)
def test_to_worker_round_trip(message: m.Message) -> None:
    assert m.decode_to_worker(memoryview(m.encode(message))) == message
    with pytest.raises(msgspec.DecodeError):
        m.decode_to_owner(m.encode(message))


def test_every_message_type_is_covered() -> None:
    covered = {type(x) for x in TO_OWNER + TO_WORKER}
    assert covered == set(m.ToOwner.__args__) | set(m.ToWorker.__args__)


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b'{"op": "launch"}',  # no such message
        b'{"op": "submit"}',  # a field missing
        b'{"op": "submit", "requests": [[1, "clf", "1", null]]}',  # a request cut short
        b'{"op": "cancel", "ids": ["one"]}',  # a wrong type
        b'{"op": "control", "id": 1, "action": "reboot"}',  # not an action
    ],
)
def test_malformed_messages_are_refused(raw: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        m.decode_to_owner(raw)
