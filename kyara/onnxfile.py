"""Whether some bytes are an ONNX model: a look at the file's protobuf outline, without onnx or a session.

Opening a session (`kyara.runtime.open_session`) is the full check, but it costs half as much
again as loading a whole bundle; reading the outline takes milliseconds, so `kyara.bundle` refuses
garbage, a truncated file or a protobuf that is not a model when it loads one. Only the model's and
its graph's own fields are read (field numbers from onnx.proto); nodes and weights are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
"""Protobuf wire types; the others (groups) are not in ONNX."""

_MODEL_IR_VERSION, _MODEL_GRAPH = 1, 7
_GRAPH_NODE, _GRAPH_INPUT, _GRAPH_OUTPUT = 1, 11, 12


class _Malformed(Exception):
    """The bytes break protobuf's encoding; the message says where, in words."""


class _Field(NamedTuple):
    number: int
    wire_type: int
    start: int
    """Where the value begins (for a length-delimited field, after its length)."""
    end: int


def onnx_problem(data: bytes) -> str | None:
    """What makes `data` not an ONNX model, in words; None when its outline is sound."""
    if not data:
        return "it is empty"
    try:
        model = list(_fields(data, 0, len(data)))
        graphs = [field for field in model if field.number == _MODEL_GRAPH and field.wire_type == _LENGTH]
        if not any(field.number == _MODEL_IR_VERSION and field.wire_type == _VARINT for field in model):
            return "it has no ONNX version, so it is not an ONNX model"
        if len(graphs) != 1:
            return "it has no graph" if not graphs else "it has several graphs"
        graph = [field.number for field in _fields(data, graphs[0].start, graphs[0].end)]
    except _Malformed as exc:
        return f"{exc}: the file is damaged or is not an ONNX model"
    missing = [what for number, what in _GRAPH_PARTS if number not in graph]
    return f"its graph has no {' and no '.join(missing)}" if missing else None


_GRAPH_PARTS = ((_GRAPH_NODE, "operations"), (_GRAPH_INPUT, "input"), (_GRAPH_OUTPUT, "output"))


def _fields(data: bytes, start: int, end: int) -> Iterator[_Field]:
    """The fields of the message in `data[start:end]`, values skipped, not decoded."""
    position = start
    while position < end:
        key_start = position
        key, position = _varint(data, position, end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise _Malformed(f"byte {key_start} starts a field numbered 0")
        if wire_type == _VARINT:
            value_start, (_, value_end) = position, _varint(data, position, end)
        elif wire_type == _LENGTH:
            length, value_start = _varint(data, position, end)
            value_end = value_start + length
        elif wire_type in (_FIXED64, _FIXED32):
            value_start, value_end = position, position + (8 if wire_type == _FIXED64 else 4)
        else:
            raise _Malformed(f"byte {key_start} starts a field of unknown kind {wire_type}")
        if value_end > end:
            raise _Malformed(f"it is cut short: its part at byte {value_start} needs {value_end - end} more bytes")
        yield _Field(number, wire_type, value_start, value_end)
        position = value_end


def _varint(data: bytes, position: int, end: int) -> tuple[int, int]:
    """The varint at `position` and the position after it."""
    value = 0
    for shift in range(0, 70, 7):
        if position >= end:
            raise _Malformed(f"it ends in the middle of a number at byte {position}")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
    raise _Malformed(f"a number longer than protobuf allows ends at byte {position}")
