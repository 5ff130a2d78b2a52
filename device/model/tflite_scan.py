"""A .tflite file's named metadata entries (Model.metadata), without TensorFlow or the schema's generated code.

Export writes the labels into the file's own metadata (convert/tflite.py: LABELS_META) so the device can tell a
model from another bundle, or edited labels, as it does with an ONNX file's metadata_props. The device has no
TensorFlow, so this walks the flatbuffer just far enough: the root table's `buffers` and `metadata` vectors, each
entry's name and buffer. Every offset is bounds-checked: the file comes from the bundle, not from export.
"""
from __future__ import annotations

import struct

# Field slots from tensorflow/lite/schema/schema.fbs (stable since schema version 3).
_MODEL_BUFFERS, _MODEL_METADATA = 4, 6
_METADATA_NAME, _METADATA_BUFFER = 0, 1
_BUFFER_DATA, _BUFFER_OFFSET, _BUFFER_SIZE = 0, 1, 2
MAX_ENTRIES = 4096      # a converter writes a handful of entries; more is not a file export wrote


class TfliteParseError(ValueError):
    pass


def _read(buf: bytes, fmt: str, pos: int):
    if pos < 0 or pos + struct.calcsize(fmt) > len(buf):
        raise TfliteParseError("truncated or malformed flatbuffer")
    return struct.unpack_from(fmt, buf, pos)[0]


def _field(buf: bytes, table: int, slot: int) -> int:
    """The absolute position of a table's field, or 0 when the field is absent (its default)."""
    vtable = table - _read(buf, "<i", table)
    vtable_size = _read(buf, "<H", vtable)
    at = 4 + 2 * slot
    rel = _read(buf, "<H", vtable + at) if at + 2 <= vtable_size else 0
    return table + rel if rel else 0


def _deref(buf: bytes, pos: int) -> int:
    """Follow the uoffset stored at pos (to a table, vector or string)."""
    return pos + _read(buf, "<I", pos)


def _vector(buf: bytes, table: int, slot: int) -> tuple[int, int]:
    """(position of the first element, length) of a vector field; (0, 0) when absent."""
    pos = _field(buf, table, slot)
    if not pos:
        return 0, 0
    vec = _deref(buf, pos)
    n = _read(buf, "<I", vec)
    return vec + 4, n


def _bytes(buf: bytes, table: int, slot: int) -> bytes:
    start, n = _vector(buf, table, slot)
    if start + n > len(buf):
        raise TfliteParseError("truncated or malformed flatbuffer")
    return buf[start:start + n]


def _buffer_data(buf: bytes, buffers: tuple[int, int], index: int) -> bytes:
    start, n = buffers
    if not 0 <= index < n:
        raise TfliteParseError(f"metadata points at buffer {index} of {n}")
    table = _deref(buf, start + 4 * index)
    offset_pos = _field(buf, table, _BUFFER_OFFSET)
    offset = _read(buf, "<Q", offset_pos) if offset_pos else 0
    if offset > 1:   # models over 2 GB keep buffer data after the flatbuffer, at a file offset
        size_pos = _field(buf, table, _BUFFER_SIZE)
        size = _read(buf, "<Q", size_pos) if size_pos else 0
        if offset + size > len(buf):
            raise TfliteParseError("buffer data past the end of the file")
        return buf[offset:offset + size]
    return _bytes(buf, table, _BUFFER_DATA)


def metadata(buf: bytes) -> dict[str, bytes]:
    """Every named metadata entry of a .tflite file's bytes → its buffer's bytes. TfliteParseError if malformed."""
    model = _deref(buf, 0)
    start, n = _vector(buf, model, _MODEL_METADATA)
    if n > MAX_ENTRIES:
        raise TfliteParseError(f"{n} metadata entries")
    buffers = _vector(buf, model, _MODEL_BUFFERS)
    out = {}
    for i in range(n):
        entry = _deref(buf, start + 4 * i)
        name_pos = _field(buf, entry, _METADATA_NAME)
        if not name_pos:
            continue
        string = _deref(buf, name_pos)
        length = _read(buf, "<I", string)
        if string + 4 + length > len(buf):
            raise TfliteParseError("truncated or malformed flatbuffer")
        name = buf[string + 4:string + 4 + length].decode("utf-8", errors="replace")
        index_pos = _field(buf, entry, _METADATA_BUFFER)
        out[name] = _buffer_data(buf, buffers, _read(buf, "<I", index_pos) if index_pos else 0)
    return out
