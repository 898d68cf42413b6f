"""What travels between the API worker processes and the model owner, over ZeroMQ multipart
messages: one header frame (a typed message of `messages`), then raw numpy buffers (sent and
received without copies).

Messages carry many requests at once: each side gathers what it has to send during one turn of
its event loop and sends it as one message, so the cost of a message (a system call, an event-loop
wake-up, a header) is shared by the requests of a busy moment. Rows travel as three frames for all
of them: each row's length (int32), every row's token ids one after another (int32: the vocabulary
has 30,522 entries) and token types (uint8); the header says how many rows each request has.
Outputs come back as one float32 frame per output name, over every row of every answered request:
sequence outputs one after another, per-row outputs stacked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from server.core.rows import Row, RowOutputs
from server.workers.messages import Message, encode

Frames = list[Any]  # bytes, memoryview or numpy arrays (anything with the buffer interface)

# How the supervisor tells each API worker where its owner listens, and which worker it is.
OWNER_ENV = "ELECTRA_INTERNAL_OWNER"
INDEX_ENV = "ELECTRA_INTERNAL_WORKER"


def buffer(frame: Any) -> Any:
    """The bytes of a received frame, without a copy."""
    return frame.buffer if hasattr(frame, "buffer") else frame


def message_frames(message: Message, *buffers: Any) -> Frames:
    return [encode(message), *buffers]


def pack_rows(requests: Sequence[Sequence[Row]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lengths, ids, types) of every row of every request, in order."""
    rows = [row for request in requests for row in request]
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int32, count=len(rows))
    ids = np.concatenate([r.input_ids for r in rows]).astype(np.int32, copy=False)
    types = np.concatenate([r.token_type_ids for r in rows]).astype(np.uint8, copy=False)
    return lengths, ids, types


def unpack_rows(frames: Sequence[Any], counts: Sequence[int]) -> list[list[Row]]:
    """Each request's rows (`counts[i]` of them), as views on the received buffers."""
    lengths = np.frombuffer(buffer(frames[0]), dtype=np.int32)
    ids = np.frombuffer(buffer(frames[1]), dtype=np.int32)
    types = np.frombuffer(buffer(frames[2]), dtype=np.uint8)
    if sum(counts) != lengths.size or int(lengths.sum()) != ids.size or ids.size != types.size or (lengths <= 0).any():
        raise ValueError("malformed rows: counts, lengths and token arrays disagree")
    ends = np.cumsum(lengths).tolist()
    rows, first = [], 0
    for count in counts:
        request = []
        for k in range(first, first + count):
            start = ends[k] - int(lengths[k])
            request.append(Row(ids[start : ends[k]], types[start : ends[k]]))
        rows.append(request)
        first += count
    return rows


OutputSpec = list[tuple[str, bool, list[int]]]


def output_spec(outputs: RowOutputs, sequence: frozenset[str]) -> OutputSpec:
    """(name, is_sequence, per-row tail shape) per output, from one row's outputs."""
    return [
        (name, name in sequence, list(value.shape[1:] if name in sequence else value.shape))
        for name, value in outputs.items()
    ]


def pack_outputs(spec: Sequence[Sequence[Any]], rows: Sequence[RowOutputs]) -> list[np.ndarray]:
    buffers = []
    for name, is_sequence, _ in spec:
        arrays = [np.asarray(row[name], dtype=np.float32) for row in rows]
        buffers.append(np.ascontiguousarray(np.concatenate(arrays) if is_sequence else np.stack(arrays)))
    return buffers


def unpack_outputs(spec: Sequence[Sequence[Any]], frames: Sequence[Any], lengths: Sequence[int]) -> list[RowOutputs]:
    """Row outputs (in the order sent) from the frames, given each row's length."""
    rows: list[RowOutputs] = [{} for _ in lengths]
    ends = np.cumsum(lengths).tolist()
    for (name, is_sequence, tail), frame in zip(spec, frames, strict=True):
        flat = np.frombuffer(buffer(frame), dtype=np.float32)
        if is_sequence:
            joined = flat.reshape(-1, *tail)
            for i, (end, n) in enumerate(zip(ends, lengths, strict=True)):
                rows[i][name] = joined[end - n : end]
        else:
            joined = flat.reshape(len(lengths), *tail)
            for i in range(len(lengths)):
                rows[i][name] = joined[i]
    return rows
