"""Framing: a 4-byte big-endian length, then that many bytes of UTF-8 JSON (one object per frame).

One size rule end to end: a frame's body is at most `DEFAULT_MAX_FRAME` bytes *as encoded* (JSON escaping may make
a text up to 6x longer: a control byte becomes `\\u0001`). A prompt is checked against the run frame it will
travel in (`check_prompt_size`), at the edge where it enters (control socket, webhook, Python API, a forwarded
reply), so an oversized input is refused with a clear error and never reaches an agent.
"""

from __future__ import annotations

import json
import struct
from typing import Any

HEADER = struct.Struct("!I")
# A frame whose body is larger than this is refused and the peer that sent it is disconnected.
DEFAULT_MAX_FRAME = 8 * 1024 * 1024
# Bytes of a run frame besides its encoded prompt (type, ids, trace, parent, hops, flags, attempt, timeout), with
# room to spare: a prompt that passes `check_prompt_size` always fits its run frame.
RUN_FRAME_RESERVE = 4096
# The largest prompt, in bytes of its JSON encoding (quotes included).
MAX_PROMPT_BYTES = DEFAULT_MAX_FRAME - RUN_FRAME_RESERVE

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
# For texts holding lone surrogates (JSON may carry `"\\ud800"`; UTF-8 cannot): escaped, so they round-trip.
_dumps_ascii = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode
_decode = json.JSONDecoder().decode

Message = dict[str, Any]


class FrameError(Exception):
    """A peer sent something that is not a valid frame; the connection to it must be closed."""


class FrameTooLarge(FrameError):
    """A frame to send is larger than the limit; nothing was sent."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame too large: {size} bytes, limit {limit}")
        self.size = size
        self.limit = limit


class PromptTooLarge(ValueError):
    """A prompt whose run frame would exceed the frame limit. The webhook server answers it with 413."""

    def __init__(self, size: int, limit: int = MAX_PROMPT_BYTES) -> None:
        super().__init__(f"prompt too large: {size} bytes, limit {limit}")
        self.size = size
        self.limit = limit


def _body(value: Any) -> bytes:
    try:
        return _dumps(value).encode()
    except UnicodeEncodeError:
        return _dumps_ascii(value).encode()


def encode_body(value: Any) -> bytes:
    """A frame's body without its length header: to build frames that share it, and the body of a NATS
    message (which carries one frame)."""
    return _body(value)


def encoded_size(value: Any) -> int:
    """Bytes `value` takes inside a frame (its compact JSON, UTF-8)."""
    return len(_body(value))


def check_prompt_size(prompt: str) -> int:
    """The encoded size of `prompt` in its run frame; raises PromptTooLarge when that frame would not fit.

    A prompt that could not exceed the limit even if every character were escaped 6x is accepted without
    encoding it (the size returned is then a lower bound).
    """
    if len(prompt) * 6 + 2 <= MAX_PROMPT_BYTES:
        return len(prompt) + 2  # a lower bound; the frame fits whatever the escaping
    size = encoded_size(prompt)
    if size > MAX_PROMPT_BYTES:
        raise PromptTooLarge(size)
    return size


def encode(message: Message) -> bytes:
    body = _body(message)
    return HEADER.pack(len(body)) + body


def _check_envelope(message: Any) -> Message:
    """A frame is a JSON object whose `t`, `id` and `re`, when present, are strings: they are used as dictionary
    keys, so an unhashable one must not get past the decoder."""
    if not isinstance(message, dict):
        raise FrameError("frame is not a JSON object")
    for key in ("t", "id", "re"):
        if key in message and not isinstance(message[key], str):
            raise FrameError(f"field {key!r} must be a string")
    return message


def decode(body: bytes | bytearray) -> Message:
    """One frame's body (without its length header; e.g. a NATS message): raises FrameError when it is not a
    JSON object with string `t`/`id`/`re`."""
    try:
        message = _decode(body.decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise FrameError(f"frame is not valid JSON: {exc}") from None
    except RecursionError:
        raise FrameError("frame is not valid JSON: nested too deeply") from None
    return _check_envelope(message)


class FrameDecoder:
    """Incremental decoder: feed bytes, get back complete messages.

    Raises FrameError for an oversize length, bytes that are not UTF-8 JSON (including nesting too deep for the
    parser), JSON that is not an object, or an object whose `t`/`id`/`re` are there and not strings.
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
            messages.append(decode(buffer[offset + HEADER.size : end]))
            offset = end
        if offset:
            del buffer[:offset]
        return messages

    @property
    def buffered(self) -> int:
        return len(self._buffer)
