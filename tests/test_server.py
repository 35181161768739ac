"""`llmling.ipc.server` (and `paths`): modes, liveness, stale sockets, bad peers, and the peer-uid check."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from llmling.ipc.frames import HEADER, FrameDecoder, Message, encode
from llmling.ipc.paths import MAX_SOCKET_PATH, socket_path
from llmling.ipc.peer import Peer, connect
from llmling.ipc.server import AlreadyRunning, UnixServer

NOBODY = 65534


class Recorder:
    """A server's owner: answers `echo` requests and remembers everything it saw."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.connected: list[Peer] = []
        self.closed: list[Peer] = []
        self.a_peer_closed = asyncio.Event()

    def on_close(self, peer: Peer, exc: Exception | None) -> None:
        self.closed.append(peer)
        self.a_peer_closed.set()

    def on_message(self, peer: Peer, message: Message) -> None:
        self.messages.append(message)
        peer.reply(message, {"t": "result", "echo": message.get("text")})

    def server(self, path: Path) -> UnixServer:
        return UnixServer(path, self.on_message, self.connected.append, self.on_close)


@contextlib.asynccontextmanager
async def serving(path: Path, recorder: Recorder | None = None) -> AsyncIterator[UnixServer]:
    server = (recorder or Recorder()).server(path)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


def ignore(peer: Peer, message: Message) -> None:
    raise AssertionError(f"unexpected message {message!r}")


async def read_to_eof(path: Path, data: bytes) -> tuple[list[Message], bytes]:
    """Connect with a raw socket, send `data`, read until the server closes; returns frames and leftovers."""
    reader, writer = await asyncio.open_unix_connection(os.fspath(path))
    writer.write(data)
    received = b""
    with contextlib.suppress(ConnectionResetError):
        received = await reader.read()
    writer.close()
    decoder = FrameDecoder()
    frames = decoder.feed(received)
    return frames, received[len(b"".join(encode(f) for f in frames)) :]


# -- modes and paths ---------------------------------------------------------------------------------------
async def test_default_dir_is_0700_and_socket_0600(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short_dir))
    monkeypatch.delenv("LLMLING_SOCKET", raising=False)
    path = socket_path("sys1")
    assert path == short_dir / "llmling" / "sys1.sock"
    async with serving(path):
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_ISSOCK(path.stat().st_mode)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not path.exists()


async def test_a_loose_default_dir_is_tightened(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short_dir))
    runtime = short_dir / "llmling"
    runtime.mkdir()
    runtime.chmod(0o777)
    async with serving(runtime / "x.sock"):
        assert stat.S_IMODE(runtime.stat().st_mode) == 0o700


def test_socket_path_overrides(monkeypatch: pytest.MonkeyPatch, short_dir: Path) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short_dir))
    monkeypatch.setenv("LLMLING_SOCKET", "/tmp/from-env.sock")
    assert socket_path("n") == Path("/tmp/from-env.sock")
    assert socket_path("n", "/tmp/explicit.sock") == Path("/tmp/explicit.sock")
    monkeypatch.delenv("LLMLING_SOCKET")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert socket_path("n") == Path(f"/tmp/llmling-{os.getuid()}/n.sock")


async def test_a_path_too_long_for_the_kernel_is_refused(short_dir: Path) -> None:
    path = short_dir / ("x" * (MAX_SOCKET_PATH - len(str(short_dir))))
    with pytest.raises(ValueError, match="longer than 107 bytes"):
        await Recorder().server(path).start()
    assert not path.exists()


# -- liveness ------------------------------------------------------------------------------------------------
async def test_already_running_when_a_live_server_holds_the_path(sock_path: Path) -> None:
    async with serving(sock_path):
        with pytest.raises(AlreadyRunning):
            await Recorder().server(sock_path).start()
        # The first server is untouched and still answers.
        client = await connect(sock_path, ignore)
        assert (await client.request({"t": "echo", "text": "still here"}))["echo"] == "still here"
        client.close()


async def test_a_stale_socket_file_is_replaced(sock_path: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(os.fspath(sock_path))
    stale.close()  # the file stays, nobody listens
    sock_path.chmod(0o755)
    assert sock_path.exists()
    async with serving(sock_path):
        assert stat.S_IMODE(sock_path.stat().st_mode) == 0o600  # a new socket (inode numbers may be reused)
        client = await connect(sock_path, ignore)
        assert (await client.request({"t": "echo", "text": "new"}))["echo"] == "new"
        client.close()


async def test_close_removes_only_its_own_socket_file(sock_path: Path) -> None:
    first = Recorder().server(sock_path)
    await first.start()
    sock_path.unlink()  # someone removed it and another server took the path
    async with serving(sock_path):
        await first.close()
        assert sock_path.exists()
        client = await connect(sock_path, ignore)
        assert (await client.request({"t": "echo", "text": "second"}))["echo"] == "second"
        client.close()
    assert not sock_path.exists()


async def test_peers_are_tracked_until_their_connection_is_lost(sock_path: Path) -> None:
    recorder = Recorder()
    async with serving(sock_path, recorder) as server:
        client = await connect(sock_path, ignore)
        await client.request({"t": "echo", "text": "x"})
        assert len(server.peers) == 1
        assert recorder.connected == list(server.peers)
        client.close()
        await recorder.a_peer_closed.wait()
        assert recorder.closed == recorder.connected
        assert server.peers == set()


async def test_close_closes_connected_peers(sock_path: Path) -> None:
    server = Recorder().server(sock_path)
    await server.start()
    client = await connect(sock_path, ignore)
    await client.request({"t": "echo"})
    await server.close()
    await asyncio.wait_for(client.wait_closed(), 5)
    assert not sock_path.exists()


# -- bad peers -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (HEADER.pack(11) + b"hello world", "not valid JSON"),
        (HEADER.pack(2) + b"[]", "not a JSON object"),
        (HEADER.pack(64 * 1024 * 1024), "exceeds the limit"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "exceeds the limit"),
    ],
    ids=["garbage", "array", "oversize", "http"],
)
async def test_a_bad_frame_closes_only_that_peer(sock_path: Path, data: bytes, expected: str) -> None:
    recorder = Recorder()
    async with serving(sock_path, recorder) as server:
        good = await connect(sock_path, ignore)
        assert (await good.request({"t": "echo", "text": "before"}))["echo"] == "before"
        frames, rest = await asyncio.wait_for(read_to_eof(sock_path, data), 10)
        assert len(frames) == 1, frames
        assert frames[0]["t"] == "error"
        assert expected in frames[0]["error"]
        assert frames[0]["error"].startswith("protocol error")
        assert rest == b""
        assert (await good.request({"t": "echo", "text": "after"}))["echo"] == "after"
        assert good.is_open
        await recorder.a_peer_closed.wait()
        assert len(recorder.closed) == 1
        assert recorder.closed[0] is not recorder.connected[0]
        assert len(server.peers) == 1
        good.close()
    assert [m.get("text") for m in recorder.messages] == ["before", "after"]


async def test_frames_before_the_bad_one_do_not_reach_the_owner_twice(sock_path: Path) -> None:
    recorder = Recorder()
    async with serving(sock_path, recorder):
        data = encode({"t": "echo", "id": "1", "text": "one"}) + HEADER.pack(3) + b"bad"
        frames, _ = await asyncio.wait_for(read_to_eof(sock_path, data), 10)
    assert frames[-1]["t"] == "error"
    assert len(recorder.messages) <= 1


# -- another uid ---------------------------------------------------------------------------------------------
def _client_as_nobody(path: Path) -> dict:
    """In a forked child that dropped to `nobody`: connect, read until the server closes."""
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        try:
            sock.connect(os.fspath(path))
        except OSError as exc:
            return {"connect_errno": exc.errno}
        data, end = b"", "eof"
        while True:
            try:
                part = sock.recv(65536)
            except ConnectionResetError:
                end = "reset"
                break
            if not part:
                break
            data += part
    return {"data": data.hex(), "end": end}


async def run_as_nobody(path: Path) -> dict:
    """Fork a child that runs `_client_as_nobody` and reports as JSON on a pipe; this loop keeps serving.

    A fork, not an exec: the interpreter may live where `nobody` cannot reach it (e.g. under /root).
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read_end)
        try:
            result = _client_as_nobody(path)
        except BaseException as exc:
            result = {"child_error": repr(exc)}
        os.write(write_end, json.dumps(result).encode())
        os._exit(0)
    os.close(write_end)

    def collect() -> bytes:
        with os.fdopen(read_end, "rb") as pipe:
            data = pipe.read()
        os.waitpid(pid, 0)
        return data

    return json.loads(await asyncio.wait_for(asyncio.to_thread(collect), 30))


needs_root = pytest.mark.skipif(os.getuid() != 0, reason="switching to another uid needs root")


@needs_root
async def test_another_uid_cannot_reach_the_socket_through_the_filesystem(sock_path: Path) -> None:
    recorder = Recorder()
    async with serving(sock_path, recorder):
        assert stat.S_IMODE(sock_path.parent.stat().st_mode) == 0o700  # mkdtemp's mode, kept as it is
        result = await run_as_nobody(sock_path)
        assert result == {"connect_errno": 13}  # EACCES
        # The directory alone is not the only guard: the 0600 socket refuses too.
        sock_path.parent.chmod(0o755)
        result = await run_as_nobody(sock_path)
        assert result == {"connect_errno": 13}
    assert recorder.connected == []


@needs_root
async def test_another_uid_that_connects_gets_permission_denied(sock_path: Path) -> None:
    recorder = Recorder()
    async with serving(sock_path, recorder) as server:
        sock_path.parent.chmod(0o777)
        sock_path.chmod(0o666)
        result = await run_as_nobody(sock_path)
        frames = FrameDecoder().feed(bytes.fromhex(result["data"]))
        assert result["end"] == "eof"
        assert len(frames) == 1
        assert frames[0]["t"] == "error"
        assert frames[0]["error"].startswith("permission denied")
        assert f"uid {NOBODY}" in frames[0]["error"]
        assert server.peers == set()
        # Our own uid is still served.
        client = await connect(sock_path, ignore)
        assert (await client.request({"t": "echo", "text": "me"}))["echo"] == "me"
        client.close()
    assert recorder.connected != []
    assert [m.get("text") for m in recorder.messages] == ["me"]
