"""Wire format between the pool, the manager and the CLI daemon: length-prefixed JSON, never pickle."""

from __future__ import annotations

import json
import struct

MAX_FRAME = 64 * 1024 * 1024
_HEADER = struct.Struct(">I")


class ProtocolError(RuntimeError):
    """A peer sent something that is not a well-formed frame."""


def encode(message: dict[str, object]) -> bytes:
    body = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8",
                                                                              "surrogatepass")
    return _HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> dict[str, object]:
    try:
        message = json.loads(body.decode("utf-8", "surrogatepass"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"bad frame: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("frame is not a JSON object")
    return message


def frame_length(header: bytes) -> int:
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ProtocolError(f"frame of {length} bytes is over the {MAX_FRAME} limit")
    return length


HEADER_SIZE = _HEADER.size


class FrameReader:
    """Incremental decoder for a byte stream of frames (used by the manager's event loop)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[dict[str, object]]:
        self._buffer += data
        messages = []
        while len(self._buffer) >= HEADER_SIZE:
            length = frame_length(bytes(self._buffer[:HEADER_SIZE]))
            if len(self._buffer) < HEADER_SIZE + length:
                break
            body = bytes(self._buffer[HEADER_SIZE:HEADER_SIZE + length])
            del self._buffer[:HEADER_SIZE + length]
            messages.append(decode_body(body))
        return messages


def read_frame_blocking(fd: int) -> dict[str, object] | None:
    """Read one frame from a blocking fd; None at end of stream."""
    import os

    header = _read_exact(fd, HEADER_SIZE, os.read)
    if header is None:
        return None
    length = frame_length(header)
    body = _read_exact(fd, length, os.read) if length else b""
    if body is None:
        raise ProtocolError("stream ended inside a frame")
    return decode_body(body)


def _read_exact(fd: int, size: int, read: object) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = read(fd, size - len(chunks))  # type: ignore[operator]
        if not chunk:
            if chunks:
                raise ProtocolError("stream ended inside a frame")
            return None
        chunks += chunk
    return bytes(chunks)
