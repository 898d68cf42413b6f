"""KServe v2 / Open Inference Protocol tensors, shared by /v2 HTTP and KServe gRPC (docs/REFERENCE.md §5).

Protocol-free: decoding (JSON `data`, raw little-endian bytes, BYTES as 4-byte little-endian
length-prefixed strings), each task's tensor signature, checking a request's tensors against
it, and building the output tensors. Every malformed tensor is a BAD_REQUEST (HTTP 400, gRPC
INVALID_ARGUMENT) naming the tensor.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from server.core.errors import ErrorKind, ServeError, too_large
from server.core.manifest import Manifest
from server.core.tasks import classify, qa, rerank

BYTES = "BYTES"
# KServe datatype -> little-endian numpy dtype (None: BYTES, which has no fixed width).
DTYPES: dict[str, np.dtype | None] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    BYTES: None,
}
# KServe datatype -> Triton model-config data type.
CONFIG_TYPES = {name: f"TYPE_{'STRING' if name == BYTES else name}" for name in DTYPES}

RESULT, LOGITS = "RESULT", "LOGITS"
_LENGTH = struct.Struct("<I")


def bad(message: str) -> ServeError:
    return ServeError(ErrorKind.BAD_REQUEST, message)


# ---------------------------------------------------------------- signatures


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str
    dims: tuple[int, ...]  # without the batch dimension
    optional: bool = False


_INPUTS: dict[str, tuple[TensorSpec, ...]] = {
    "classify": (TensorSpec("TEXT", BYTES, (1,)), TensorSpec("TEXT_PAIR", BYTES, (1,), optional=True)),
    "qa": (TensorSpec("QUESTION", BYTES, (1,)), TensorSpec("CONTEXT", BYTES, (1,))),
    "tag": (TensorSpec("TEXT", BYTES, (1,)),),
    "discriminate": (TensorSpec("TEXT", BYTES, (1,)),),
    "rerank": (TensorSpec("QUERY", BYTES, (1,)), TensorSpec("DOCUMENT", BYTES, (1,))),
}


def input_specs(task: str) -> tuple[TensorSpec, ...]:
    return _INPUTS[task]


def output_specs(manifest: Manifest) -> tuple[TensorSpec, ...]:
    result = TensorSpec(RESULT, BYTES, (1,))
    if manifest.task != "classify":
        return (result,)
    # -1 when the manifest does not name the head's labels.
    return result, TensorSpec(LOGITS, "FP32", (len(manifest.labels) or -1,))


# ---------------------------------------------------------------- BYTES encoding


def split_bytes(raw: bytes | memoryview, name: str, count: int) -> list[bytes]:
    """A BYTES tensor's raw contents -> exactly `count` elements (each prefixed by a uint32 LE
    length); a length that overruns the data, or bytes left over, is a lie about the tensor."""
    view = memoryview(raw)
    items: list[bytes] = []
    offset = 0
    for _ in range(count):
        if offset + 4 > len(view):
            raise bad(f"input '{name}': the data ends after {len(items)} of its {count} BYTES elements")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise bad(f"input '{name}': BYTES element of {length} bytes overruns the tensor data")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if offset != len(view):
        raise bad(f"input '{name}': shape says {count} BYTES elements, the data holds more")
    return items


def join_bytes(items: Iterable[bytes]) -> bytes:
    return b"".join(_LENGTH.pack(len(item)) + item for item in items)


# ---------------------------------------------------------------- input tensors


@dataclass(slots=True)
class InputTensor:
    name: str
    datatype: str
    shape: list[int]
    data: list[bytes] | np.ndarray  # BYTES elements, or a flat numeric array


def element_count(shape: Sequence[int], name: str, max_elements: int | None = None) -> int:
    """Elements a shape declares, checked before any data is decoded (a huge declared shape is
    refused at once, whatever the payload)."""
    if any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in shape):
        raise bad(f"input '{name}': shape {list(shape)} must be non-negative integers")
    if len(shape) > 8:
        raise bad(f"input '{name}': shape {list(shape)[:9]}... has too many dimensions")
    count = math.prod(shape)
    if max_elements is not None and count > max_elements:
        raise too_large(f"input '{name}': shape {list(shape)} holds {count} rows; at most {max_elements} are allowed")
    return count


def _check_datatype(name: str, datatype: Any) -> None:
    if datatype not in DTYPES:
        raise bad(f"input '{name}': unknown datatype {datatype!r}; expected one of {', '.join(DTYPES)}")


def from_raw(
    name: str, datatype: str, shape: Sequence[int], raw: bytes | memoryview, max_elements: int | None = None
) -> InputTensor:
    """A tensor whose data is raw bytes (gRPC raw_input_contents, the HTTP binary extension)."""
    _check_datatype(name, datatype)
    count = element_count(shape, name, max_elements)
    dtype = DTYPES[datatype]
    if dtype is None:
        items = split_bytes(raw, name, count)
        data: list[bytes] | np.ndarray = items
        found = len(items)
    else:
        if len(raw) % dtype.itemsize:
            raise bad(f"input '{name}': {len(raw)} bytes is not a whole number of {datatype} elements")
        data = np.frombuffer(raw, dtype=dtype)
        found = int(data.size)
    if found != count:
        raise bad(f"input '{name}': shape {list(shape)} needs {count} elements, the data holds {found}")
    return InputTensor(name, datatype, list(shape), data)


def _flatten(value: Any) -> list[Any]:
    if not isinstance(value, list):
        return [value]
    flat: list[Any] = []
    stack = [iter(value)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def from_elements(
    name: str, datatype: str, shape: Sequence[int], elements: Sequence[Any], max_elements: int | None = None
) -> InputTensor:
    """A tensor from its elements in row-major order (BYTES elements are bytes)."""
    _check_datatype(name, datatype)
    count = element_count(shape, name, max_elements)
    if len(elements) != count:
        raise bad(f"input '{name}': shape {list(shape)} needs {count} elements, the data holds {len(elements)}")
    dtype = DTYPES[datatype]
    if dtype is None:
        if not all(isinstance(item, bytes) for item in elements):
            raise bad(f"input '{name}': BYTES elements must be strings")
        return InputTensor(name, datatype, list(shape), list(elements))
    try:
        array = np.asarray(elements, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        raise bad(f"input '{name}': data is not {datatype}: {exc}") from exc
    return InputTensor(name, datatype, list(shape), array)


def from_json(
    name: str, datatype: str, shape: Sequence[int], data: Any, max_elements: int | None = None
) -> InputTensor:
    """A tensor whose data is JSON (`data`: flat or nested, row-major); BYTES elements are strings."""
    _check_datatype(name, datatype)
    element_count(shape, name, max_elements)  # the declared size first: data that is far bigger is refused unread
    flat = _flatten(data)
    if datatype == BYTES:
        if not all(isinstance(item, str) for item in flat):
            raise bad(f"input '{name}': BYTES data must be strings")
        flat = [item.encode() for item in flat]
    return from_elements(name, datatype, shape, flat, max_elements)


@dataclass(slots=True)
class Batch:
    """A request's text columns, checked against the model's signature."""

    columns: dict[str, list[str]]  # input name -> one string per row
    rows: int
    two_dimensional: bool  # [N, 1] (Triton's batching convention) rather than [N]


def gather(specs: Sequence[TensorSpec], tensors: Sequence[InputTensor], model: str) -> Batch:
    by_name = {spec.name: spec for spec in specs}
    seen: dict[str, InputTensor] = {}
    for tensor in tensors:
        spec = by_name.get(tensor.name)
        if spec is None:
            raise bad(f"unknown input '{tensor.name}' for model '{model}'; it takes {', '.join(s.name for s in specs)}")
        if tensor.name in seen:
            raise bad(f"input '{tensor.name}' is given more than once")
        if tensor.datatype != spec.datatype:
            raise bad(f"input '{tensor.name}' must be {spec.datatype}, got {tensor.datatype}")
        seen[tensor.name] = tensor
    missing = [spec.name for spec in specs if not spec.optional and spec.name not in seen]
    if missing:
        raise bad(f"model '{model}' needs input(s) {', '.join(missing)}")

    rows: int | None = None
    two_dimensional = False
    columns: dict[str, list[str]] = {}
    for name, tensor in seen.items():
        shape = tensor.shape
        if len(shape) == 2 and shape[1] == 1:
            two_dimensional = True
        elif len(shape) != 1:
            raise bad(f"input '{name}': shape {shape} must be [N, 1] or [N]")
        if rows is None:
            rows = shape[0]
        elif shape[0] != rows:
            raise bad(f"input '{name}' has {shape[0]} rows, other inputs have {rows}")
        columns[name] = _texts(name, tensor.data)
    if not rows:
        raise bad("a request needs at least one row")
    return Batch(columns, rows, two_dimensional)


def _texts(name: str, data: list[bytes] | np.ndarray) -> list[str]:
    texts = []
    for i, item in enumerate(data):
        try:
            texts.append(item.decode("utf-8"))
        except (UnicodeDecodeError, AttributeError) as exc:
            raise bad(f"input '{name}'[{i}] is not UTF-8 text") from exc
    return texts


def task_items(task: str, batch: Batch) -> list[Any]:
    """The batch's rows as the task's typed items (the same checks as every other protocol's)."""
    c = batch.columns
    if task == "classify":
        pairs: list[Any] = c.get("TEXT_PAIR") or [None] * batch.rows
        return [
            classify.item(text, pair, f"row {i}") for i, (text, pair) in enumerate(zip(c["TEXT"], pairs, strict=True))
        ]
    if task == "qa":
        return [qa.item(q, ctx, f"row {i}") for i, (q, ctx) in enumerate(zip(c["QUESTION"], c["CONTEXT"], strict=True))]
    if task == "rerank":
        return [rerank.pair(q, d, f"row {i}") for i, (q, d) in enumerate(zip(c["QUERY"], c["DOCUMENT"], strict=True))]
    return list(c["TEXT"])


# ---------------------------------------------------------------- output tensors


@dataclass(slots=True)
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    data: list[bytes] | np.ndarray

    def raw(self) -> bytes:
        if isinstance(self.data, list):
            return join_bytes(self.data)
        dtype = DTYPES[self.datatype]
        return np.ascontiguousarray(self.data, dtype=dtype).tobytes()

    def json_data(self) -> list[Any]:
        if isinstance(self.data, list):
            return [item.decode("utf-8") for item in self.data]
        return np.asarray(self.data).reshape(-1).tolist()


def requested_outputs(specs: Sequence[TensorSpec], names: Sequence[str] | None, model: str) -> list[TensorSpec]:
    """The outputs a request asks for (all when it names none), in the order it names them."""
    if not names:
        return list(specs)
    by_name = {spec.name: spec for spec in specs}
    chosen = []
    for name in names:
        spec = by_name.get(name)
        if spec is None:
            raise bad(f"unknown output '{name}' for model '{model}'; it returns {', '.join(by_name)}")
        if spec not in chosen:
            chosen.append(spec)
    return chosen


def build_outputs(
    chosen: Sequence[TensorSpec], batch: Batch, results: Sequence[Any], logits: Sequence[np.ndarray] | None
) -> list[OutputTensor]:
    """RESULT: the UTF-8 JSON of each row's REST result; LOGITS: FP32 [N, labels]."""
    outputs = []
    for spec in chosen:
        if spec.name == RESULT:
            shape = [batch.rows, 1] if batch.two_dimensional else [batch.rows]
            data = [orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY) for value in results]
            outputs.append(OutputTensor(RESULT, BYTES, shape, data))
        elif spec.name == LOGITS:
            if logits is None:
                raise ServeError(ErrorKind.INTERNAL, "LOGITS were requested but not computed")
            matrix = np.stack([np.asarray(row, dtype=np.float32).reshape(-1) for row in logits])
            outputs.append(OutputTensor(LOGITS, "FP32", list(matrix.shape), matrix))
    return outputs
