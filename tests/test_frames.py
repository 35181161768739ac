"""`llmling.ipc.frames`: the length-prefixed JSON framing."""

from __future__ import annotations

import json

import pytest

from llmling.ipc.frames import (
    DEFAULT_MAX_FRAME,
    HEADER,
    MAX_PROMPT_BYTES,
    RUN_FRAME_RESERVE,
    FrameDecoder,
    FrameError,
    PromptTooLarge,
    check_prompt_size,
    encode,
    encoded_size,
)

MESSAGES = [
    {"t": "send", "id": "c1-1", "agent": "a", "prompt": "héllo ✓", "stream": True},
    {"t": "chunk", "re": "c1-1", "text": ""},
    {"t": "result", "re": "c1-1", "usage": {"prompt_tokens": 3}, "downstream": [{"agent": "b"}], "x": None},
    {},
]


def raw(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


def test_encode_is_length_then_utf8_json() -> None:
    frame = encode({"t": "ok", "text": "é"})
    (length,) = HEADER.unpack_from(frame)
    assert length == len(frame) - HEADER.size
    assert json.loads(frame[HEADER.size :].decode("utf-8")) == {"t": "ok", "text": "é"}


@pytest.mark.parametrize("message", MESSAGES)
def test_round_trip(message: dict) -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode(message)) == [message]
    assert decoder.buffered == 0


def test_partial_feeds_byte_by_byte() -> None:
    decoder = FrameDecoder()
    data = b"".join(encode(m) for m in MESSAGES)
    out = []
    for index in range(len(data)):
        out.extend(decoder.feed(data[index : index + 1]))
    assert out == MESSAGES
    assert decoder.buffered == 0


def test_partial_header_and_body_stay_buffered() -> None:
    decoder = FrameDecoder()
    frame = encode(MESSAGES[0])
    assert decoder.feed(frame[:2]) == []
    assert decoder.buffered == 2
    assert decoder.feed(frame[2:10]) == []
    assert decoder.feed(frame[10:]) == [MESSAGES[0]]


def test_many_frames_in_one_feed_and_a_trailing_partial() -> None:
    decoder = FrameDecoder()
    many = [{"t": "chunk", "re": "x", "n": n} for n in range(500)]
    tail = encode({"t": "result", "re": "x"})
    assert decoder.feed(b"".join(encode(m) for m in many) + tail[:5]) == many
    assert decoder.buffered == 5
    assert decoder.feed(tail[5:]) == [{"t": "result", "re": "x"}]


def test_frame_at_the_limit_is_accepted() -> None:
    body = json.dumps({"t": "x", "pad": "a" * 100}).encode()
    decoder = FrameDecoder(max_frame=len(body))
    assert decoder.feed(raw(body)) == [json.loads(body)]


def test_oversize_length_raises_before_the_body_arrives() -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameError, match="exceeds the limit"):
        decoder.feed(HEADER.pack(DEFAULT_MAX_FRAME + 1))


def test_oversize_with_a_custom_limit() -> None:
    decoder = FrameDecoder(max_frame=10)
    with pytest.raises(FrameError, match="11 bytes"):
        decoder.feed(raw(b"{" + b" " * 9 + b"}"))


@pytest.mark.parametrize("body", [b"not json", b'{"t": ', b"\xff\xfe{}", b""])
def test_non_json_raises(body: bytes) -> None:
    with pytest.raises(FrameError, match="not valid JSON"):
        FrameDecoder().feed(raw(body))


@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"42", b"null", b"true"])
def test_json_that_is_not_an_object_raises(body: bytes) -> None:
    with pytest.raises(FrameError, match="not a JSON object"):
        FrameDecoder().feed(raw(body))


def test_bad_frame_after_good_ones_still_raises() -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameError):
        decoder.feed(encode({"t": "ok"}) + raw(b"[]"))


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"t": [1]}', "field 't' must be a string"),
        (b'{"t": "x", "id": {"a": 1}}', "field 'id' must be a string"),
        (b'{"t": "x", "re": null}', "field 're' must be a string"),
        (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
    ],
)
def test_unusable_envelopes_and_deep_nesting_raise(body: bytes, expected: str) -> None:
    with pytest.raises(FrameError, match=expected):
        FrameDecoder().feed(raw(body))


def test_lone_surrogates_round_trip() -> None:
    message = {"t": "send", "prompt": "a\ud800b"}
    assert FrameDecoder().feed(encode(message)) == [message]


def test_the_prompt_size_is_the_size_as_encoded() -> None:
    assert check_prompt_size("hello") >= 7
    fits = "x" * (MAX_PROMPT_BYTES - 2)
    assert check_prompt_size(fits) == MAX_PROMPT_BYTES
    with pytest.raises(
        PromptTooLarge, match=f"prompt too large: {MAX_PROMPT_BYTES + 1} bytes, limit {MAX_PROMPT_BYTES}"
    ):
        check_prompt_size(fits + "x")
    control = "\x01" * (MAX_PROMPT_BYTES // 6 + 1)  # 1/6 of the limit as text, just over it as JSON
    with pytest.raises(PromptTooLarge) as caught:
        check_prompt_size(control)
    assert caught.value.size == encoded_size(control) == 6 * len(control) + 2
    assert MAX_PROMPT_BYTES + RUN_FRAME_RESERVE == DEFAULT_MAX_FRAME
