"""`llmling.ipc.peer`: request/response correlation, streamed chunks, closing, over real Unix sockets."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from llmling.ipc.frames import Message
from llmling.ipc.peer import Peer, PeerClosed, RemoteError, connect, new_id

Handler = Callable[[Peer, Message], None]


class Accepted(list[Peer]):
    """The peers a server accepted, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.any = asyncio.Event()

    async def first(self) -> Peer:
        await self.any.wait()
        return self[0]


@contextlib.asynccontextmanager
async def listening(path: Path, handler: Handler) -> AsyncIterator[Accepted]:
    """A bare server of Peers (no UnixServer): yields the peers it accepts."""
    accepted = Accepted()

    def make() -> Peer:
        peer = Peer(handler)
        accepted.append(peer)
        accepted.any.set()
        return peer

    server = await asyncio.get_running_loop().create_unix_server(make, os.fspath(path))
    try:
        yield accepted
    finally:
        server.close()
        for peer in accepted:
            peer.abort()
        await server.wait_closed()


def ignore(peer: Peer, message: Message) -> None:
    """An on_message for the client side of tests that expect no unsolicited messages."""
    raise AssertionError(f"unexpected message {message!r}")


async def test_concurrent_requests_get_their_own_replies(sock_path: Path) -> None:
    count = 40

    def handler(peer: Peer, message: Message) -> None:
        # Answer in the reverse order of arrival: correlation must not rely on order.
        delay = (count - message["n"]) * 0.002

        async def answer() -> None:
            await asyncio.sleep(delay)
            peer.reply(message, {"t": "result", "n": message["n"], "echo": message["id"]})

        asyncio.get_running_loop().create_task(answer())

    async with listening(sock_path, handler):
        client = await connect(sock_path, ignore)
        replies = await asyncio.gather(*(client.request({"t": "work", "n": n}) for n in range(count)))
        client.close()
    assert [reply["n"] for reply in replies] == list(range(count))
    for reply in replies:
        assert reply["re"] == reply["echo"]
    assert len({reply["re"] for reply in replies}) == count


async def test_chunks_arrive_in_order_then_the_final_reply(sock_path: Path) -> None:
    def handler(peer: Peer, message: Message) -> None:
        for index in range(5):
            peer.reply(message, {"t": "chunk", "text": f"part{index} "})
        peer.reply(message, {"t": "result", "content": "done"})

    chunks: list[Message] = []
    async with listening(sock_path, handler):
        client = await connect(sock_path, ignore)
        reply = await client.request({"t": "run"}, on_chunk=chunks.append)
        client.close()
    assert [chunk["text"] for chunk in chunks] == [f"part{index} " for index in range(5)]
    assert all(chunk["t"] == "chunk" for chunk in chunks)
    assert reply["t"] == "result"
    assert reply["content"] == "done"


async def test_unsolicited_messages_and_unknown_replies_go_to_on_message(sock_path: Path) -> None:
    def handler(peer: Peer, message: Message) -> None:
        peer.send({"t": "event", "n": 1})
        peer.send({"t": "result", "re": "nobody-asked"})
        peer.reply(message, {"t": "ok"})

    got: list[Message] = []
    async with listening(sock_path, handler):
        client = await connect(sock_path, lambda peer, message: got.append(message))
        reply = await client.request({"t": "hi"})
        client.close()
    assert reply["t"] == "ok"
    assert got == [{"t": "event", "n": 1}, {"t": "result", "re": "nobody-asked"}]


async def test_error_reply_raises_remote_error(sock_path: Path) -> None:
    def handler(peer: Peer, message: Message) -> None:
        peer.reply(message, {"t": "error", "error": "no such thing"})

    async with listening(sock_path, handler):
        client = await connect(sock_path, ignore)
        with pytest.raises(RemoteError, match="no such thing") as caught:
            await client.request({"t": "x"})
        # start_request returns the error frame itself, without raising.
        reply = await client.start_request({"t": "x"})
        client.close()
    assert caught.value.message["t"] == "error"
    assert reply == {"t": "error", "error": "no such thing", "re": reply["re"]}


async def test_disconnect_fails_every_pending_request(sock_path: Path) -> None:
    received: list[Message] = []
    three = asyncio.Event()

    def handler(peer: Peer, message: Message) -> None:
        received.append(message)
        if len(received) == 3:
            three.set()

    async with listening(sock_path, handler) as accepted:
        client = await connect(sock_path, ignore)
        pending = [asyncio.ensure_future(client.request({"t": "never", "n": n})) for n in range(3)]
        await three.wait()
        accepted[0].close()
        results = await asyncio.gather(*pending, return_exceptions=True)
        await client.wait_closed()
        assert all(isinstance(result, PeerClosed) for result in results), results
        assert not client.is_open
        with pytest.raises(PeerClosed):
            client.start_request({"t": "late"})
        client.send({"t": "dropped"})  # a send on a closed peer is dropped, not raised


async def test_on_close_is_called_with_the_peer(sock_path: Path) -> None:
    closed: asyncio.Future[Peer] = asyncio.get_running_loop().create_future()
    async with listening(sock_path, ignore) as accepted:
        client = await connect(sock_path, ignore, on_close=lambda peer, exc: closed.set_result(peer))
        (await accepted.first()).close()
        assert await closed is client


async def test_peer_credentials_name_the_other_process(sock_path: Path) -> None:
    async with listening(sock_path, ignore) as accepted:
        client = await connect(sock_path, ignore)
        assert (await accepted.first()).credentials == (os.getpid(), os.getuid(), os.getgid())
        assert client.credentials == (os.getpid(), os.getuid(), os.getgid())
        client.close()


async def test_a_large_frame_crosses_in_many_reads(sock_path: Path) -> None:
    text = "x" * (3 * 1024 * 1024)

    def handler(peer: Peer, message: Message) -> None:
        peer.reply(message, {"t": "result", "size": len(message["text"]), "text": message["text"][::-1]})

    async with listening(sock_path, handler):
        client = await connect(sock_path, ignore)
        reply = await client.request({"t": "big", "text": text})
        await client.drain()
        client.close()
    assert reply["size"] == len(text)
    assert reply["text"] == text


def test_new_ids_are_unique_and_carry_the_pid() -> None:
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(item.startswith(f"{os.getpid():x}-") for item in ids)


def test_new_ids_restart_with_the_child_pid_after_fork() -> None:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read_end)
        os.write(write_end, new_id().encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child_id = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_id == f"{pid:x}-1"
