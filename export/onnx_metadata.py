"""Read an ONNX file's ``metadata_props`` without the ``onnx`` package.

An ONNX file is a protobuf ``ModelProto``. Its top-level fields are scanned over a
memory map (the graph, with any embedded weights, is skipped, not parsed), and the
``metadata_props`` entries (field 14, ``StringStringEntryProto {key = 1, value = 2}``)
are decoded. ``ir_version`` (1) and ``graph`` (7) must be present, which rejects most
files that are not ONNX models.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class _ProtoError(Exception):
    pass


def _varint(buf: Any, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _ProtoError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: Any, start: int, end: int) -> Iterator[tuple[int, int, Any]]:
    """Yield (field number, wire type, value) of one protobuf message; skip the payloads."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _ProtoError("field number 0")
        value: Any = None
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1 or wire == 5:
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = (pos, pos + length), pos + length
        else:
            raise _ProtoError(f"unsupported wire type {wire}")
        if pos > end:
            raise _ProtoError("message runs past the end of the file")
        yield number, wire, value


def _scan_model(buf: Any) -> dict[str, str]:
    found: set[int] = set()
    metadata: dict[str, str] = {}
    for number, wire, value in _fields(buf, 0, len(buf)):
        found.add(number if wire in (0, 2) else -1)
        if number == 14 and wire == 2:  # ModelProto.metadata_props
            entry = {n: bytes(buf[v[0]:v[1]]).decode("utf-8") for n, w, v in _fields(buf, *value) if w == 2}
            metadata[entry.get(1, "")] = entry.get(2, "")
    if not {1, 7} <= found:  # ir_version and graph are always present in an ONNX model
        raise _ProtoError("no ir_version / graph field")
    return metadata


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """Read an ONNX file's ``metadata_props`` without loading the graph.

    Args:
        path: The ``.onnx`` file (external weight files are not read).

    Returns:
        The metadata entries, key -> value.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file is not a readable ONNX model (corrupted, truncated or another format).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Model file not found: {path}.")
    try:
        with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _scan_model(buf)
    except (_ProtoError, ValueError, UnicodeDecodeError, OSError) as exc:
        raise ValueError(
            f"The file {path} is not a valid ONNX model ({exc}). It may be corrupted, truncated or "
            "in another format: export it again with diffperception (or copy it again) and pass "
            "the .onnx file."
        ) from None
