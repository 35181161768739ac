"""Hostile input at the IPC boundary: idle and slow connections, clients that never read, a flood of connections
over the cap, frames that fail to decode, prompts and replies over the frame limit, unsafe runtime dirs and
descriptor exhaustion. Real sockets throughout; the supervisor cases run `llmling up` in a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import pwd
import resource
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from llmling import AgentPool, AgentRunError
from llmling.ipc.client import Client
from llmling.ipc.frames import DEFAULT_MAX_FRAME, HEADER, MAX_PROMPT_BYTES, FrameDecoder, Message, encode
from llmling.ipc.peer import Peer, connect
from llmling.ipc.server import UnixServer
from llmling.testing import SystemProcess, llmling_command
from tests.conftest import Systems, short_tempdir
from tests.test_cli_e2e import raw_exchange
from tests.test_crash_restart import wait_for

NOBODY = 65534

CONFIG = """\
agents:
  echo:
    callback: cb:echo
  big:
    callback: big:reply
  first:
    callback: big:same
    connections: [second]
  second:
    callback: big:same
"""

BIG = """
def reply(prompt):
    # Control bytes: 1.5 MB of them encode to 9 MB of JSON, over the 8 MiB frame.
    return "\\x01" * int(prompt)


def same(prompt):
    return prompt
"""


def raw(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


def restarts(system: SystemProcess) -> dict[str, int]:
    return {agent["name"]: agent["restarts"] for agent in system.status()["agents"]}


# -- one in-process server with small limits ----------------------------------------------------------------
class Owner:
    """Answers `echo` with its text, `flood` with `n` chunks of `size` bytes, and records what it saw."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.server: UnixServer | None = None

    def on_message(self, peer: Peer, message: Message) -> None:
        self.messages.append(message)
        if message["t"] == "hello" and self.server is not None:
            self.server.trust(peer)  # as the supervisor does for an authenticated agent
        if message["t"] == "flood":
            for _ in range(message["n"]):
                peer.reply(message, {"t": "chunk", "text": "x" * message["size"]})
            return
        peer.reply(message, {"t": "result", "echo": message.get("text")})


@contextlib.asynccontextmanager
async def serving(path: Path, owner: Owner, **limits: Any) -> AsyncIterator[UnixServer]:
    server = owner.server = UnixServer(path, owner.on_message, exempt=lambda m: m.get("t") == "hello", **limits)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll `condition` (a counter of the server) on the loop that serves it."""
    async with asyncio.timeout(timeout):
        for _ in itertools.count():
            if condition():
                return
            await asyncio.sleep(0.01)


async def read_until_closed(path: Path, data: bytes = b"") -> list[Message]:
    reader, writer = await asyncio.open_unix_connection(os.fspath(path))
    if data:
        writer.write(data)
    received = b""
    with contextlib.suppress(ConnectionResetError):
        received = await reader.read()
    writer.close()
    return FrameDecoder().feed(received)


def ignore(peer: Peer, message: Message) -> None:
    pass


async def test_idle_and_slow_connections_are_closed_with_an_error(sock_path: Path) -> None:
    owner = Owner()
    async with serving(sock_path, owner, idle_timeout=0.3) as server:
        # Waits for its reply after a complete frame: not idle, stays.
        waiting = await connect(sock_path, ignore)
        assert (await waiting.request({"t": "echo", "text": "x"}))["echo"] == "x"
        silent = await read_until_closed(sock_path)
        assert [frame["error"] for frame in silent] == ["idle timeout: no complete frame within 0.3 s"]
        # A slow client: a frame begun and trickled, never finished.
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as slow:
            slow.setblocking(False)
            await loop.sock_connect(slow, os.fspath(sock_path))
            await loop.sock_sendall(slow, HEADER.pack(100) + b'{"t":')
            answer = asyncio.ensure_future(loop.sock_recv(slow, 65536))
            while not answer.done():
                with contextlib.suppress(OSError):
                    slow.send(b" ")
                await asyncio.wait({answer}, timeout=0.05)
            frames = FrameDecoder().feed(answer.result())
        assert frames[0]["error"].startswith("idle timeout")
        assert server.refused["idle"] == 2
        # The waiting client outlived two timeouts and still works.
        assert waiting.is_open
        assert (await waiting.request({"t": "echo", "text": "y"}))["echo"] == "y"
        waiting.close()


async def test_connections_over_the_cap_are_refused_at_their_first_frame(sock_path: Path) -> None:
    owner = Owner()
    async with serving(sock_path, owner, max_clients=2) as server:
        clients = [await connect(sock_path, ignore) for _ in range(2)]
        for client in clients:
            await client.request({"t": "echo"})
        over = await read_until_closed(sock_path, encode({"t": "echo", "id": "1", "text": "over"}))
        assert [frame["error"] for frame in over] == ["too many connections: the limit is 2 clients"]
        assert "over" not in [m.get("text") for m in owner.messages]
        # An exempt first frame (an agent's hello) stays over the cap; trusted, it no longer counts.
        agent = await connect(sock_path, ignore)
        assert (await agent.request({"t": "hello"}))["t"] == "result"
        assert len(server.trusted) == 1
        assert server.clients == 2
        assert server.refused["over_cap"] == 1
        clients[0].close()
        await until(lambda: server.clients == 1)
        again = await connect(sock_path, ignore)
        assert (await again.request({"t": "echo", "text": "in"}))["echo"] == "in"
        for peer in (clients[1], agent, again):
            peer.close()


async def test_a_client_that_does_not_read_is_paused_then_dropped(sock_path: Path) -> None:
    owner = Owner()
    limit = 2 * 1024 * 1024
    async with serving(sock_path, owner, max_write_buffer=limit) as server:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await asyncio.get_running_loop().sock_connect(sock, os.fspath(sock_path))
        # A reply of 1.5 MiB it does not read: over the high-water mark, under the limit. Reading pauses.
        sock.sendall(encode({"t": "flood", "id": "1", "n": 24, "size": 65536}))
        await until(lambda: len(owner.messages) == 1)
        sock.sendall(encode({"t": "echo", "id": "2", "text": "queued"}))
        witness = await connect(sock_path, ignore)
        for _ in range(3):  # round trips of another client: the loop has seen the queued bytes by now
            await witness.request({"t": "echo", "text": "w"})
        assert [m.get("text") for m in owner.messages if m["t"] == "echo" and m.get("id") == "2"] == []
        # It reads: the queued request is served.
        decoder, frames = FrameDecoder(), []
        sock.setblocking(False)
        while not any(frame.get("re") == "2" for frame in frames):
            data = await asyncio.get_running_loop().sock_recv(sock, 1 << 20)
            frames.extend(decoder.feed(data))
        # Now a flood over the limit, unread: it is dropped, its buffer freed, the others unaffected.
        sock.sendall(encode({"t": "flood", "id": "3", "n": 64, "size": 65536}))
        await until(lambda: server.refused["write_buffer"] == 1)
        await until(lambda: server.clients == 1)
        sock.close()
        assert (await witness.request({"t": "echo", "text": "fine"}))["echo"] == "fine"
        witness.close()


# -- a real supervisor --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def system(module_systems: Systems) -> SystemProcess:
    return module_systems.start(CONFIG, modules={"big": BIG})


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"t": [1], "id": "x"}', "field 't' must be a string"),
        (b'{"t": "ping", "id": {"a": 1}}', "field 'id' must be a string"),
        (b'{"t": "result", "re": ["a"]}', "field 're' must be a string"),
        (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
        (b'{"t": "ping", "id": "\xff\xfe"}', "not valid JSON"),
        (b'"a string"', "not a JSON object"),
        (b'{"t": "ping", "id": "1", "n": ' + b"9" * 5000 + b"}", "not valid JSON"),
    ],
    ids=["unhashable-t", "unhashable-id", "unhashable-re", "deep", "utf8", "string", "huge-int"],
)
def test_every_decode_failure_gets_one_error_frame(system: SystemProcess, body: bytes, expected: str) -> None:
    before = restarts(system)
    frames, closed = raw_exchange(system.socket, raw(body))
    assert closed
    assert len(frames) == 1, frames
    assert frames[0]["t"] == "error"
    assert expected in frames[0]["error"], frames[0]
    assert system.request({"t": "send", "agent": "echo", "prompt": "still"})["content"] == "echo: still"
    assert restarts(system) == before
    assert "Fatal error" not in system.log_text()


def test_a_prompt_that_expands_past_the_frame_is_refused_at_the_edge(system: SystemProcess) -> None:
    before = restarts(system)
    # A send frame just under the limit: it fits, the run frame it would make (more ids) does not.
    empty = len(encode({"t": "send", "agent": "echo", "prompt": "", "id": "edge"})) - HEADER.size
    edge = "x" * (DEFAULT_MAX_FRAME - empty - 4)
    with Client(system.socket, 60) as client:
        reply = client.request({"t": "send", "agent": "echo", "prompt": edge, "id": "edge"})
    assert reply["t"] == "error"
    assert reply["error"] == f"prompt too large: {len(edge) + 2} bytes, limit {MAX_PROMPT_BYTES}"
    # A frame over the limit itself: one error frame, the connection closed, nothing else touched.
    frames, closed = raw_exchange(system.socket, HEADER.pack(DEFAULT_MAX_FRAME + 1) + b"{")
    assert closed
    assert "exceeds the limit" in frames[0]["error"]
    # The CLI refuses before it connects, in one line.
    prompt = "\x01" * (1536 * 1024)  # 1.5 MiB of text, 9 MiB as JSON
    done = system.cli("send", "echo", "-", input=prompt)
    assert done.returncode == 1
    assert done.stderr == f"Error: prompt too large: {6 * len(prompt) + 2} bytes, limit {MAX_PROMPT_BYTES}\n"
    assert restarts(system) == before


def test_a_reply_over_the_frame_limit_is_an_error_result(system: SystemProcess) -> None:
    before = restarts(system)
    reply = system.request({"t": "send", "agent": "big", "prompt": str(1536 * 1024)}, timeout=60)
    assert reply["t"] == "error"
    assert reply["error"].startswith("agent 'big' failed: reply too large: 94372")
    assert reply["error"].endswith(f" bytes, limit {DEFAULT_MAX_FRAME}")
    # No dropped connection, no restart: the agent answers the next run.
    assert system.request({"t": "send", "agent": "big", "prompt": "3"})["content"] == "\x01" * 3
    assert restarts(system) == before


def test_send_wait_with_a_tree_over_the_frame_is_one_error_line(system: SystemProcess) -> None:
    before = restarts(system)
    prompt = "x" * (4608 * 1024)  # 4.5 MiB: fits one frame; with its downstream copy the reply does not
    done = system.cli("send", "first", "-", "--wait", input=prompt, timeout=120)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "FrameError" not in done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "reply too large" in done.stderr
    assert restarts(system) == before


# -- the runtime dir -------------------------------------------------------------------------------------------
def up_with_runtime_dir(config: Path, runtime: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "LLMLING_SOCKET"}
    env["XDG_RUNTIME_DIR"] = str(runtime)
    env["XDG_STATE_HOME"] = str(config.parent / "state")
    return subprocess.run(
        [*llmling_command(), "up", str(config)], capture_output=True, text=True, timeout=60, env=env
    )


def test_a_runtime_dir_that_is_a_symlink_is_named(tmp_path: Path) -> None:
    config = tmp_path / "sys.yml"
    config.write_text("agents:\n  echo:\n    callback: cb:echo\n")
    runtime = short_tempdir()
    (runtime / "llmling").symlink_to(tmp_path)
    done = up_with_runtime_dir(config, runtime)
    assert done.returncode == 1
    assert f"runtime dir {runtime / 'llmling'} is a symlink" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(os.getuid() != 0, reason="giving a directory to another uid needs root")
def test_a_runtime_dir_of_another_owner_names_it(tmp_path: Path) -> None:
    config = tmp_path / "sys.yml"
    config.write_text("agents:\n  echo:\n    callback: cb:echo\n")
    runtime = short_tempdir()
    (runtime / "llmling").mkdir(mode=0o755)
    os.chown(runtime / "llmling", NOBODY, NOBODY)
    done = up_with_runtime_dir(config, runtime)
    assert done.returncode == 1
    owner = pwd.getpwuid(NOBODY).pw_name
    assert f"runtime dir {runtime / 'llmling'} belongs to uid {NOBODY} ({owner}) (mode 0755)" in done.stderr
    assert "the supervisor ended during start-up" not in done.stderr


# -- descriptors ---------------------------------------------------------------------------------------------
def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_connection_flood_under_a_low_descriptor_limit(systems: Systems) -> None:
    """With 256 descriptors, a flood of connections that never send: the supervisor stops accepting at its
    budget instead of running out; an agent killed meanwhile is restarted (its new process connects although the
    flood fills the backlog: idle connections are evicted to make room); sends are answered during the flood."""
    system = systems.start("agents:\n  echo:\n    callback: cb:echo\n  other:\n    callback: cb:pid\n")
    limit = 256
    resource.prlimit(system.pid, resource.RLIMIT_NOFILE, (limit, limit))
    victim = next(agent for agent in system.status()["agents"] if agent["name"] == "other")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    flood: list[socket.socket] = []
    peak = 0
    try:
        for _ in range(1000):  # bounded: stops at the first connect the full backlog refuses
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.connect(os.fspath(system.socket))
            except BlockingIOError:
                sock.close()
                break
            flood.append(sock)
            peak = max(peak, open_fds(system.pid))
        wait_for(lambda: "not accepting connections for now: descriptor budget used up" in system.log_text(), 60)
        peak = max(peak, open_fds(system.pid))
        assert peak < limit
        os.kill(victim["pid"], signal.SIGKILL)
        wait_for(lambda: "ready again" in system.log_text(), 60)
        # A client gets in too, through the backlog, while the flood is still connected.
        done = system.cli("send", "other", "?", timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() != str(victim["pid"])
        peak = max(peak, open_fds(system.pid))
    finally:
        for sock in flood:
            sock.close()
    assert peak < limit
    assert len(flood) > limit
    after = next(agent for agent in system.status()["agents"] if agent["name"] == "other")
    assert after["state"] == "ready" and after["restarts"] == 1
    assert system.request({"t": "send", "agent": "echo", "prompt": "ok"})["content"] == "echo: ok"
    assert "Too many open files" not in system.log_text()


SPAWN_SHORT_OF_FDS = """
import asyncio, errno, os, resource, sys
import multiprocessing.forkserver as forkserver
from llmling.agent_proc.spec import AgentSpec
from llmling.ipc.fdbudget import open_fds
from llmling.supervisor.spawner import Spawner

async def main():
    spawner = Spawner([])
    spawner.start()
    spec = AgentSpec(name="x", config={}, socket_path="/nonexistent/s.sock", token="t", base_dir=".")
    first = await spawner.spawn(spec)
    first.join(30)
    server = forkserver._forkserver._forkserver_pid
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_fds() + 4, hard))
    try:
        await spawner.spawn(spec)
        print("spawned")
    except OSError as exc:
        print("refused", errno.errorcode[exc.errno], exc.strerror)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    os.kill(server, 0)  # the forkserver is alive
    again = await spawner.spawn(spec)
    again.join(30)
    print("again", forkserver._forkserver._forkserver_pid == server, again.exitcode is not None)
    spawner.close()

asyncio.run(main())
"""


def test_a_spawn_short_of_descriptors_fails_and_the_forkserver_stays(tmp_path: Path) -> None:
    script = tmp_path / "spawn.py"
    script.write_text(SPAWN_SHORT_OF_FDS)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("refused EMFILE too many open files:"), done.stdout
    assert lines[1] == "again True True", done.stdout


GROWING = """
def fill(prompt):
    # A reply that fits its frame, and as the next agent's prompt, leaves no room for the run frame's fields.
    return "x" * (8 * 1024 * 1024 - 1000)


def same(prompt):
    return prompt
"""


async def test_the_python_api_and_forwarded_replies_obey_the_prompt_limit(tmp_path: Path) -> None:
    (tmp_path / "growing.py").write_text(GROWING)
    config = tmp_path / "pool.yml"
    config.write_text(
        "agents:\n  filler: {callback: growing:fill, connections: [copy]}\n  copy: {callback: growing:same}\n"
    )
    async with AgentPool(config) as pool:
        with pytest.raises(AgentRunError, match=r"prompt too large: 9437186 bytes, limit 8384512"):
            await pool.get_agent("copy").run("\x01" * (1536 * 1024))
        with pytest.raises(AgentRunError, match=r"agent 'copy' failed: prompt too large: 8387610 bytes"):
            await pool.get_agent("filler").run("go", wait_for_connections=True)
        # Both agents still serve, in the same processes.
        assert (await pool.get_agent("copy").run("small")).content == "small"
        assert all(agent["restarts"] == 0 for agent in pool.supervisor.status()["agents"])
