"""Which tensors of an ONNX file keep their data in other files ("external data"), without the `onnx` package.

A bundle's sha256 covers the .onnx file only, and onnxruntime reads external data from a `location` relative to
the model (or, for a model loaded from bytes, to the working directory), so a model with external data could
run weights nobody hashed. The device refuses such files; this reads the protobuf wire format just far enough
to find them: every TensorProto in the graph, its sub-graphs, node attributes and functions.
"""
from __future__ import annotations

# Field numbers from onnx.proto3 (stable since IR version 3).
_MODEL_GRAPH, _MODEL_FUNCTIONS = 7, 25
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER = 1, 5, 15
_NODE_ATTRIBUTE = 5
_FUNCTION_NODE = 7
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 5, 6, 10, 11, 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14
_EXTERNAL = 1


class OnnxParseError(ValueError):
    pass


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise OnnxParseError("truncated or malformed protobuf")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview):
    """(field number, wire type, value) for each field; value is an int or a memoryview of the bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = None, pos + 8
        elif wire == 5:
            value, pos = None, pos + 4
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > len(buf):
                raise OnnxParseError("truncated or malformed protobuf")
            value, pos = buf[pos:pos + n], pos + n
        else:
            raise OnnxParseError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


def _tensor(buf, found: list[str]) -> None:
    name, external = "", False
    for field, wire, value in _fields(buf):
        if field == _TENSOR_NAME and wire == 2:
            name = bytes(value).decode("utf-8", "replace")
        elif (field == _TENSOR_DATA_LOCATION and wire == 0 and value == _EXTERNAL) or field == _TENSOR_EXTERNAL_DATA:
            external = True
    if external:
        found.append(name or "(unnamed)")


def _sparse(buf, found):
    for field, wire, value in _fields(buf):
        if field in (_SPARSE_VALUES, _SPARSE_INDICES) and wire == 2:
            _tensor(value, found)


def _attribute(buf, found):
    for field, wire, value in _fields(buf):
        if wire != 2:
            continue
        if field in (_ATTR_T, _ATTR_TENSORS):
            _tensor(value, found)
        elif field in (_ATTR_G, _ATTR_GRAPHS):
            _graph(value, found)
        elif field in (_ATTR_SPARSE, _ATTR_SPARSES):
            _sparse(value, found)


def _nodes(buf, node_field: int, found) -> None:
    for field, wire, value in _fields(buf):
        if field == node_field and wire == 2:
            for f, w, v in _fields(value):
                if f == _NODE_ATTRIBUTE and w == 2:
                    _attribute(v, found)


def _graph(buf, found):
    _nodes(buf, _GRAPH_NODE, found)
    for field, wire, value in _fields(buf):
        if field == _GRAPH_INITIALIZER and wire == 2:
            _tensor(value, found)
        elif field == _GRAPH_SPARSE_INITIALIZER and wire == 2:
            _sparse(value, found)


def external_tensors(model: bytes) -> list[str]:
    """Names of the tensors whose data lives outside this ONNX file (empty: the file is self-contained)."""
    found: list[str] = []
    for field, wire, value in _fields(memoryview(model)):
        if field == _MODEL_GRAPH and wire == 2:
            _graph(value, found)
        elif field == _MODEL_FUNCTIONS and wire == 2:
            _nodes(value, _FUNCTION_NODE, found)
    return found
