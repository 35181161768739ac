"""`llmling.ipc.client`: the blocking CLI client, against a real UnixServer (run on this loop; the client on a
thread)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from llmling.ipc.client import Client, NotRunning
from llmling.ipc.frames import Message
from llmling.ipc.peer import Peer
from llmling.ipc.server import UnixServer


def handler(peer: Peer, message: Message) -> None:
    kind = message.get("t")
    if kind == "stream":
        peer.send({"t": "result", "re": "someone-else"})  # not ours: skipped by the client
        for text in ("a", "b"):
            peer.reply(message, {"t": "chunk", "text": text})
        peer.reply(message, {"t": "result", "content": "ab"})
    elif kind == "hang-up":
        peer.close()
    else:
        peer.reply(message, {"t": "ok", "echo": message.get("x")})


def test_not_running_when_nobody_listens(short_dir: Path) -> None:
    with pytest.raises(NotRunning, match="no system is running"):
        Client(short_dir / "none.sock")
    (short_dir / "file.sock").write_text("")
    with pytest.raises(NotRunning):
        Client(short_dir / "file.sock")


async def test_requests_streams_and_hang_ups(sock_path: Path) -> None:
    server = UnixServer(sock_path, handler)
    await server.start()

    def client_side() -> tuple[Message, list[Message], str]:
        with Client(sock_path, timeout=10) as client:
            reply = client.request({"t": "echo", "x": 1})
            frames = list(client.stream({"t": "stream"}))
            try:
                client.request({"t": "hang-up"})
            except ConnectionError as exc:
                lost = str(exc)
            else:
                lost = ""
        return reply, frames, lost

    try:
        reply, frames, lost = await asyncio.to_thread(client_side)
    finally:
        await server.close()
    assert reply["t"] == "ok"
    assert reply["echo"] == 1
    assert [frame["t"] for frame in frames] == ["chunk", "chunk", "result"]
    assert [frame.get("text") for frame in frames[:2]] == ["a", "b"]
    assert frames[-1]["content"] == "ab"
    assert len({frame["re"] for frame in frames}) == 1
    assert lost == "the server closed the connection"


async def test_ids_are_distinct_per_request(sock_path: Path) -> None:
    server = UnixServer(sock_path, handler)
    await server.start()

    def client_side() -> list[str]:
        with Client(sock_path, timeout=10) as client:
            return [client.request({"t": "echo"})["re"] for _ in range(5)]

    try:
        ids = await asyncio.to_thread(client_side)
    finally:
        await server.close()
    assert len(set(ids)) == 5
