"""KServe v2 tensors: BYTES framing, JSON/raw decoding, signature checks and output building."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from server.api.kserve import tensors as t
from server.api.kserve.http_routes import parse_inputs, parse_outputs, split_request
from server.core.errors import ErrorKind, ServeError
from server.core.manifest import Manifest


def manifest(task: str, labels: list[str] | None = None) -> Manifest:
    return Manifest.model_validate(
        {
            "name": f"m-{task}",
            "task": task,
            "max_seq_len": 64,
            "labels": labels or [],
            "variants": {
                "fp32": {"file": "m.onnx", "sha256": "0", "parity": {"max_abs_error": 0, "top1_agreement": 1}}
            },
            "source": {"model": "test"},
        }
    )


def text(name: str, values: list[str], shape: list[int] | None = None) -> t.InputTensor:
    return t.from_elements(name, "BYTES", shape or [len(values), 1], [v.encode() for v in values])


def rejected(kind: ErrorKind = ErrorKind.BAD_REQUEST) -> pytest.RaisesExc:
    return pytest.raises(ServeError, check=lambda e: e.kind is kind)


# ---------------------------------------------------------------- BYTES framing


def test_bytes_round_trip_with_empty_and_multibyte_elements() -> None:
    items = [b"", "héllo wörld".encode(), b"\x00\xff", b"x" * 300]
    raw = t.join_bytes(items)
    assert raw[:4] == struct.pack("<I", 0)
    assert raw[4:8] == struct.pack("<I", len(items[1]))
    assert t.split_bytes(raw, "TEXT", len(items)) == items
    assert t.split_bytes(b"", "TEXT", 0) == []


@pytest.mark.parametrize(
    "raw",
    [b"\x05\x00", struct.pack("<I", 10) + b"short", t.join_bytes([b"ok"]) + b"\x01", t.join_bytes([b"a", b"b"])],
    ids=["truncated-length", "overrun", "trailing-garbage", "more-than-declared"],
)
def test_malformed_bytes_name_the_tensor(raw: bytes) -> None:
    with rejected() as caught:
        t.split_bytes(raw, "CONTEXT", 1)
    assert "CONTEXT" in caught.value.message


def test_a_declared_shape_over_the_limit_is_refused_before_any_data_is_read() -> None:
    """A tensor that says it holds more rows than a request may is a 413 from its shape alone."""
    with pytest.raises(ServeError) as caught:
        t.from_raw("TEXT", "BYTES", [10**9, 1], b"\x00" * 8, max_elements=512)
    assert caught.value.kind is ErrorKind.TOO_LARGE and "512" in caught.value.message
    with pytest.raises(ServeError) as caught:
        t.from_json("TEXT", "BYTES", [513], ["x"] * 513, max_elements=512)
    assert caught.value.kind is ErrorKind.TOO_LARGE


# ---------------------------------------------------------------- decoding


def test_from_raw_numeric_is_little_endian_and_counted() -> None:
    values = np.array([1.5, -2.0, 3.25], dtype="<f4")
    tensor = t.from_raw("X", "FP32", [3], values.tobytes())
    np.testing.assert_array_equal(tensor.data, values)
    with rejected():
        t.from_raw("X", "FP32", [4], values.tobytes())  # shape needs 4 elements
    with rejected():
        t.from_raw("X", "FP32", [1], b"\x00\x01")  # not a whole FP32


def test_from_raw_bytes_checks_the_element_count() -> None:
    assert t.from_raw("TEXT", "BYTES", [2, 1], t.join_bytes([b"a", b"b"])).data == [b"a", b"b"]
    with rejected() as caught:
        t.from_raw("TEXT", "BYTES", [3, 1], t.join_bytes([b"a", b"b"]))
    assert "after 2 of its 3 BYTES elements" in caught.value.message


def test_from_json_flattens_nested_rows() -> None:
    tensor = t.from_json("TEXT", "BYTES", [2, 1], [["one"], ["two"]])
    assert tensor.data == [b"one", b"two"]
    numeric = t.from_json("N", "INT64", [2, 2], [[1, 2], [3, 4]])
    np.testing.assert_array_equal(numeric.data, [1, 2, 3, 4])


@pytest.mark.parametrize(
    ("datatype", "shape", "data"),
    [
        ("BYTES", [1], [1]),  # BYTES as JSON must be strings
        ("TEXTY", [1], ["a"]),  # unknown datatype
        ("BYTES", [-1], ["a"]),  # negative dimension
        ("BYTES", [2], ["a"]),  # count mismatch
        ("INT32", [1], ["nope"]),  # not a number
    ],
)
def test_from_json_rejects_malformed_tensors(datatype: str, shape: list[int], data: list[object]) -> None:
    with rejected():
        t.from_json("IN", datatype, shape, data)


# ---------------------------------------------------------------- signatures


def test_signatures_follow_the_contract() -> None:
    assert [(s.name, s.optional) for s in t.input_specs("classify")] == [("TEXT", False), ("TEXT_PAIR", True)]
    assert [s.name for s in t.input_specs("qa")] == ["QUESTION", "CONTEXT"]
    assert [s.name for s in t.input_specs("tag")] == [s.name for s in t.input_specs("discriminate")] == ["TEXT"]
    assert all(s.datatype == "BYTES" and s.dims == (1,) for task in t._INPUTS for s in t.input_specs(task))
    classify = t.output_specs(manifest("classify", ["a", "b", "c"]))
    assert [(s.name, s.datatype, s.dims) for s in classify] == [("RESULT", "BYTES", (1,)), ("LOGITS", "FP32", (3,))]
    assert [s.name for s in t.output_specs(manifest("qa"))] == ["RESULT"]


def test_gather_accepts_n_by_1_and_flat_shapes() -> None:
    specs = t.input_specs("classify")
    batch = t.gather(specs, [text("TEXT", ["a", "b"]), text("TEXT_PAIR", ["x", ""])], "m")
    assert (batch.rows, batch.two_dimensional) == (2, True)
    assert t.task_items("classify", batch) == [("a", "x"), ("b", None)]
    flat = t.gather(specs, [text("TEXT", ["a", "b", "c"], shape=[3])], "m")
    assert (flat.rows, flat.two_dimensional) == (3, False)
    assert t.task_items("classify", flat) == [(s, None) for s in "abc"]


def test_gather_qa_columns() -> None:
    batch = t.gather(t.input_specs("qa"), [text("CONTEXT", ["ctx"]), text("QUESTION", ["why?"])], "m")
    assert t.task_items("qa", batch) == [("why?", "ctx")]
    assert t.task_items("tag", t.gather(t.input_specs("tag"), [text("TEXT", ["x"])], "m")) == ["x"]
    empty = t.gather(t.input_specs("qa"), [text("CONTEXT", ["ctx"]), text("QUESTION", [""])], "m")
    with pytest.raises(ServeError) as caught:
        t.task_items("qa", empty)  # the same check as REST's: the pipeline refuses empty questions
    assert caught.value.kind is ErrorKind.INVALID_INPUT and "row 0.question" in caught.value.message


@pytest.mark.parametrize(
    ("tensors", "fragment"),
    [
        ([text("TXT", ["a"])], "unknown input 'TXT'"),
        ([text("TEXT", ["a"]), text("TEXT", ["b"])], "more than once"),
        ([t.from_elements("TEXT", "INT32", [1, 1], [3])], "must be BYTES"),
        ([text("TEXT_PAIR", ["a"])], "needs input(s) TEXT"),
        ([text("TEXT", ["a", "b"], shape=[1, 2])], "must be [N, 1] or [N]"),
        ([text("TEXT", ["a"], shape=[1, 1, 1])], "must be [N, 1] or [N]"),
        ([text("TEXT", ["a", "b"]), text("TEXT_PAIR", ["x"])], "has 1 rows"),
        ([text("TEXT", [], shape=[0, 1])], "at least one row"),
        ([t.from_elements("TEXT", "BYTES", [1], [b"\xff\xfe"])], "not UTF-8"),
    ],
    ids=["name", "duplicate", "type", "missing", "wide", "rank3", "rows", "empty", "utf8"],
)
def test_gather_rejects_bad_tensors(tensors: list[t.InputTensor], fragment: str) -> None:
    with rejected() as caught:
        t.gather(t.input_specs("classify"), tensors, "m")
    assert fragment in caught.value.message


# ---------------------------------------------------------------- outputs


def test_requested_outputs_select_and_validate() -> None:
    specs = t.output_specs(manifest("classify", ["a", "b"]))
    assert [s.name for s in t.requested_outputs(specs, None, "m")] == ["RESULT", "LOGITS"]
    assert [s.name for s in t.requested_outputs(specs, ["LOGITS"], "m")] == ["LOGITS"]
    with rejected() as caught:
        t.requested_outputs(specs, ["PROBS"], "m")
    assert "unknown output 'PROBS'" in caught.value.message


def test_build_outputs_shapes_and_encodings() -> None:
    specs = t.output_specs(manifest("classify", ["a", "b"]))
    batch = t.gather(t.input_specs("classify"), [text("TEXT", ["x", "y"])], "m")
    results = [[{"label": "a", "score": 0.75}], [{"label": "b", "score": 0.5}]]
    logits = [np.array([0.1, -0.2], dtype=np.float32), np.array([1.0, 2.0], dtype=np.float32)]
    result, logit = t.build_outputs(specs, batch, results, logits)
    assert (result.shape, logit.shape) == ([2, 1], [2, 2])
    assert [orjson.loads(item) for item in result.data] == results
    assert t.split_bytes(result.raw(), "RESULT", 2) == result.data
    assert result.json_data() == [orjson.dumps(r).decode() for r in results]
    np.testing.assert_array_equal(np.frombuffer(logit.raw(), dtype="<f4").reshape(2, 2), np.stack(logits))
    assert logit.json_data() == pytest.approx([0.1, -0.2, 1.0, 2.0])

    flat = t.gather(t.input_specs("classify"), [text("TEXT", ["x"], shape=[1])], "m")
    (only,) = t.build_outputs([specs[0]], flat, results[:1], None)
    assert only.shape == [1]


# ---------------------------------------------------------------- the HTTP binary extension


def test_binary_request_splits_header_and_tensors() -> None:
    raw_text = t.join_bytes([b"first", b"second"])
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "TEXT",
                    "datatype": "BYTES",
                    "shape": [2, 1],
                    "parameters": {"binary_data_size": len(raw_text)},
                },
                {"name": "TEXT_PAIR", "datatype": "BYTES", "shape": [2, 1], "data": ["p", "q"]},
            ],
            "outputs": [{"name": "LOGITS", "parameters": {"binary_data": True}}, {"name": "RESULT"}],
            "parameters": {"binary_data_output": False},
        }
    )
    parsed, binary = split_request(header + raw_text, str(len(header)))
    tensors = parse_inputs(parsed, binary)
    assert [x.data for x in tensors] == [[b"first", b"second"], [b"p", b"q"]]
    assert parse_outputs(parsed) == (["LOGITS", "RESULT"], {"*": False, "LOGITS": True, "RESULT": False})


ORPHAN = b'{"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}'


@pytest.mark.parametrize(
    ("body", "length"),
    [
        (b'{"inputs": []}', None),  # no inputs
        (b"not json", None),
        (b'{"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1]}]}', None),  # no data at all
        (ORPHAN + b"extra", str(len(ORPHAN))),  # bytes that belong to no input
        (b"{}", "99"),  # header length past the body
    ],
    ids=["empty", "json", "nodata", "orphan-bytes", "length"],
)
def test_malformed_binary_requests_are_bad_requests(body: bytes, length: str | None) -> None:
    with rejected() as caught:
        header, binary = split_request(body, length)
        parse_inputs(header, binary)
    assert caught.value.message


def test_classification_extension_is_refused_clearly() -> None:
    with rejected() as caught:
        parse_outputs({"outputs": [{"name": "RESULT", "parameters": {"classification": 2}}]})
    assert "classification" in caught.value.message
