"""Framing: a 4-byte big-endian length, then that many bytes of UTF-8 JSON (one object per frame)."""

from __future__ import annotations

import json
import struct
from typing import Any

HEADER = struct.Struct("!I")
# A frame larger than this is refused and the peer that sent it is disconnected.
DEFAULT_MAX_FRAME = 8 * 1024 * 1024

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_decode = json.JSONDecoder().decode

Message = dict[str, Any]


class FrameError(Exception):
    """A peer sent something that is not a valid frame; the connection to it must be closed."""


def encode(message: Message) -> bytes:
    body = _dumps(message).encode()
    return HEADER.pack(len(body)) + body


class FrameDecoder:
    """Incremental decoder: feed bytes, get back complete messages.

    Raises FrameError for an oversize length, bytes that are not JSON, or JSON that is not an object.
    """

    __slots__ = ("_buffer", "_max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._buffer = bytearray()
        self._max_frame = max_frame

    def feed(self, data: bytes) -> list[Message]:
        buffer = self._buffer
        buffer += data
        messages: list[Message] = []
        offset = 0
        size = len(buffer)
        while size - offset >= HEADER.size:
            (length,) = HEADER.unpack_from(buffer, offset)
            if length > self._max_frame:
                raise FrameError(f"frame of {length} bytes exceeds the limit of {self._max_frame}")
            end = offset + HEADER.size + length
            if end > size:
                break
            try:
                message = _decode(buffer[offset + HEADER.size : end].decode())
            except (UnicodeDecodeError, ValueError) as exc:
                raise FrameError(f"frame is not valid JSON: {exc}") from None
            if not isinstance(message, dict):
                raise FrameError("frame is not a JSON object")
            messages.append(message)
            offset = end
        if offset:
            del buffer[:offset]
        return messages

    @property
    def buffered(self) -> int:
        return len(self._buffer)
