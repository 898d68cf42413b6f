"""What travels between the API worker processes and the model owner, over ZeroMQ multipart
messages: one JSON header frame, then raw numpy buffers (sent and received without copies).

Rows of a request travel as three frames: each row's length (int32), every row's token ids one
after another (int32: the vocabulary has 30,522 entries) and token types (uint8). Outputs come
back as one float32 frame per output name: rows' sequence outputs one after another, per-row
outputs stacked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from server.core.rows import Row, RowOutputs

Frames = list[Any]  # bytes, memoryview or numpy arrays (anything with the buffer interface)


def header(frame: Any) -> dict[str, Any]:
    return orjson.loads(frame.buffer if hasattr(frame, "buffer") else frame)


def encode(head: dict[str, Any], *buffers: Any) -> Frames:
    return [orjson.dumps(head, option=orjson.OPT_NON_STR_KEYS), *buffers]


def pack_rows(rows: Sequence[Row]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int32, count=len(rows))
    ids = np.concatenate([r.input_ids for r in rows]).astype(np.int32, copy=False)
    types = np.concatenate([r.token_type_ids for r in rows]).astype(np.uint8, copy=False)
    return lengths, ids, types


def _buffer(frame: Any) -> Any:
    return frame.buffer if hasattr(frame, "buffer") else frame


def unpack_rows(frames: Sequence[Any]) -> list[Row]:
    """The rows of a submit message, as views on the received buffers."""
    lengths = np.frombuffer(_buffer(frames[0]), dtype=np.int32)
    ids = np.frombuffer(_buffer(frames[1]), dtype=np.int32)
    types = np.frombuffer(_buffer(frames[2]), dtype=np.uint8)
    if int(lengths.sum()) != ids.size or ids.size != types.size or (lengths <= 0).any():
        raise ValueError("malformed rows: lengths and token arrays disagree")
    ends = np.cumsum(lengths)
    starts = ends - lengths
    return [Row(ids[a:b], types[a:b]) for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]


def pack_outputs(outputs: Sequence[RowOutputs], sequence: frozenset[str]) -> tuple[list[list[Any]], list[np.ndarray]]:
    """(spec, buffers): spec is [name, is_sequence, per-row tail shape] per output."""
    if not outputs:
        return [], []
    spec, buffers = [], []
    for name in outputs[0]:
        arrays = [np.asarray(row[name], dtype=np.float32) for row in outputs]
        is_sequence = name in sequence
        joined = np.concatenate(arrays) if is_sequence else np.stack(arrays)
        spec.append([name, is_sequence, list(arrays[0].shape[1:] if is_sequence else arrays[0].shape)])
        buffers.append(np.ascontiguousarray(joined))
    return spec, buffers


def unpack_outputs(spec: Sequence[Sequence[Any]], frames: Sequence[Any], lengths: Sequence[int]) -> list[RowOutputs]:
    rows: list[RowOutputs] = [{} for _ in lengths]
    ends = np.cumsum(lengths).tolist()
    starts = [end - n for end, n in zip(ends, lengths, strict=True)]
    for (name, is_sequence, tail), frame in zip(spec, frames, strict=True):
        flat = np.frombuffer(_buffer(frame), dtype=np.float32)
        if is_sequence:
            joined = flat.reshape(-1, *tail)
            for i, (a, b) in enumerate(zip(starts, ends, strict=True)):
                rows[i][name] = joined[a:b]
        else:
            joined = flat.reshape(len(lengths), *tail)
            for i in range(len(lengths)):
                rows[i][name] = joined[i]
    return rows
