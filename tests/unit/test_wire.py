"""What the API workers and the model owner send each other: the rows and outputs of many requests
in one message survive the trip exactly, as views on the received buffers; malformed rows are refused."""

from __future__ import annotations

import numpy as np
import pytest

from server.core.rows import Row
from server.workers import messages as m
from server.workers import wire


def test_the_rows_of_many_requests_round_trip() -> None:
    requests = [
        [Row(np.array([101, 7, 30521, 102]), np.array([0, 0, 1, 1])), Row(np.array([101, 102]), np.zeros(2, int))],
        [Row(np.array([101, 5, 102]), np.zeros(3, int))],
    ]
    frames = [bytes(memoryview(a)) for a in wire.pack_rows(requests)]
    back = wire.unpack_rows(frames, [2, 1])
    for got, sent in zip(back, requests, strict=True):
        assert [r.input_ids.tolist() for r in got] == [r.input_ids.tolist() for r in sent]
        assert [r.token_type_ids.tolist() for r in got] == [r.token_type_ids.tolist() for r in sent]


def test_malformed_rows_are_refused() -> None:
    _, ids, types = wire.pack_rows([[Row(np.array([1, 2, 3]), np.zeros(3, int))]])
    with pytest.raises(ValueError):
        wire.unpack_rows([np.array([5], dtype=np.int32), ids, types], [1])
    with pytest.raises(ValueError):
        wire.unpack_rows([np.array([3], dtype=np.int32), ids, types], [2])  # more rows claimed than sent


def test_outputs_round_trip_for_sequence_and_per_row_outputs() -> None:
    lengths = [3, 1]
    rows = [
        {"logits": np.arange(3 * 2, dtype=np.float32).reshape(3, 2), "pooled": np.array([1.0, 2.0], dtype=np.float32)},
        {"logits": np.array([[9.0, 8.0]], dtype=np.float32), "pooled": np.array([3.0, 4.0], dtype=np.float32)},
    ]
    spec = wire.output_spec(rows[0], frozenset({"logits"}))
    header, *outputs = wire.message_frames(
        m.Results(spec, [m.Answered(1, 0.0, 0.0, lengths)]), *wire.pack_outputs(spec, rows)
    )
    head = m.decode_to_worker(header)
    assert isinstance(head, m.Results)
    back = wire.unpack_outputs(head.spec, [bytes(memoryview(b)) for b in outputs], head.results[0].lengths)
    for got, sent in zip(back, rows, strict=True):
        for name in sent:
            np.testing.assert_array_equal(got[name], sent[name])
