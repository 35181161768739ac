"""Webhooks under attack: trickled heads and bodies, connection floods, bodies that grow when encoded.

Real `llmling up` systems, real TCP on loopback (127.0.0.1 and 127.0.0.2 as two client addresses).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from llmling.config.schema import AgentConfig
from tests._automation import RECORDER, free_port, got, wait_listening, wait_until


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def ready(status: dict) -> bool:
    return all(agent["state"] == "ready" for agent in status["agents"])


def start_hook(systems, agent: str = "callback: rec:record", env: dict[str, str] | None = None, **keys: object):  # type: ignore[no-untyped-def]
    """A system with agent `hooks` (configured by the YAML lines `agent`) and one webhook trigger `hook` on /hook
    with `keys`; returns (system, port) once the server listens."""
    port = free_port()
    trigger = {"type": "webhook", "name": "hook", "port": port, "path": "/hook", **keys}
    lines = "".join(f"    {line}\n" for line in agent.splitlines())
    system = systems.start(
        f"agents:\n  hooks:\n{lines}    triggers:\n      - {json.dumps(trigger)}\n",
        modules={"rec": RECORDER},
        env=env,
    )
    wait_listening(port)
    return system, port


async def read_all(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed)."""
    data = b""
    try:
        while chunk := await reader.read(65536):
            data += chunk
    except ConnectionError:
        pass
    return data


async def test_slowloris_head_and_body_are_cut_off(systems) -> None:  # type: ignore[no-untyped-def]
    system, port = start_hook(systems, body_timeout_s=2, header_timeout_s=2, keepalive_timeout_s=2)

    async def trickle(head: bytes, rest: bytes) -> tuple[bytes, int, float]:
        """Send `head` at once, then `rest` at 15 B/s until the server closes; (reply, bytes of rest sent, s)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        writer.write(head)
        reply = asyncio.ensure_future(read_all(reader))
        sent = 0
        try:
            while not reply.done() and sent < len(rest):
                writer.write(rest[sent : sent + 3])
                sent += 3
                await asyncio.wait({reply}, timeout=0.2)
        except ConnectionError:
            pass
        data = await reply
        elapsed = time.monotonic() - started
        writer.close()
        return data, sent, elapsed

    # The body: 1,000 bytes announced, trickled at 15 B/s (66 s to finish): 408 at the body timeout.
    head = b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n"
    data, sent, elapsed = await trickle(head, b"b" * 1000)
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert b"body not received within 2 s" in data
    assert elapsed >= 1.9 and sent < 1000

    # The head: a request line, then header bytes at 15 B/s: closed at the head timeout without a reply.
    data, sent, elapsed = await trickle(b"POST /hook HTTP/1.1\r\n", b"X-Padding: " + b"p" * 2000 + b"\r\n\r\n")
    assert data == b"" and elapsed >= 1.9 and sent < 2000

    # A kept-alive connection that sends no next request is closed after keepalive_timeout_s.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nidle")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    assert head.startswith(b"HTTP/1.1 202") and b"connection: close" not in head.lower()
    length = int(
        next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    )
    await reader.readexactly(length)
    idle_since = time.monotonic()
    assert await asyncio.wait_for(read_all(reader), 30) == b""
    assert time.monotonic() - idle_since >= 1.5
    writer.close()

    # Malformed requests: a header line over 8190 bytes, too many headers, not HTTP. 400, one log line each.
    malformed = [
        b"POST /hook HTTP/1.1\r\nX-A: " + b"a" * 9000 + b"\r\n\r\n",
        b"POST /hook HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(120)) + b"\r\n",
        b"\x16\x03\x01 not http at all\r\n\r\n",
    ]
    for request in malformed:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        assert (await asyncio.wait_for(read_all(reader), 30)).startswith(b"HTTP/1.0 400")
        writer.close()
    assert "Traceback" not in system.log_text()

    # Neither became a run; the server still serves a normal request.
    url = f"http://127.0.0.1:{port}/hook?wait=true"
    async with aiohttp.ClientSession() as http, http.post(url, data=b"after") as response:
        assert response.status == 200
    assert [call["prompt"] for call in got(system.config.parent)] == ["idle", "after"]
    (trigger,) = system.request({"t": "triggers"})["triggers"]
    assert trigger["rejected"] == 1 and trigger["fired"] == 2


async def test_connection_limits_per_client_and_per_server(systems) -> None:  # type: ignore[no-untyped-def]
    _, port = start_hook(systems, header_timeout_s=30, max_connections=12, max_connections_per_client=8)
    held: list[asyncio.StreamWriter] = []

    async def connect(source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        writer.write(b"POST /hook HTTP/1.1\r\n")  # a head that never ends: the connection stays open
        return reader, writer

    async def refused(source: str) -> bytes:
        reader, writer = await connect(source)
        data = await asyncio.wait_for(read_all(reader), 30)
        writer.close()
        assert data.startswith(b"HTTP/1.1 503"), data
        return data

    # 8 from one address are held; the 9th from it is refused at once, with a reason.
    for _ in range(8):
        held.append((await connect("127.0.0.1"))[1])
    assert b"too many connections from 127.0.0.1 (8)" in await refused("127.0.0.1")
    # Another address gets the 4 left of the server's 12; then the server is full for everyone.
    for _ in range(4):
        held.append((await connect("127.0.0.2"))[1])
    assert b"too many connections (12)" in await refused("127.0.0.2")
    assert b"too many connections (12)" in await refused("127.0.0.3")
    # Every held connection is still open (nothing was answered or closed on them).
    assert all(not writer.is_closing() for writer in held)

    # Closed connections free their places at once.
    for writer in held[:3]:
        writer.close()
    async with aiohttp.ClientSession() as http:

        async def post() -> int:
            async with http.post(f"http://127.0.0.1:{port}/hook", data=b"x") as response:
                return response.status

        async def accepted() -> bool:
            return await post() == 202

        assert await eventually(accepted), "a closed connection's place was not freed"
    for writer in held[3:]:
        writer.close()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> bool:
    """Await `check()` until it is true (or `timeout` passes): the server notices some things asynchronously."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_connection_flood_leaves_the_system_answering(systems) -> None:  # type: ignore[no-untyped-def]
    system, port = start_hook(systems, header_timeout_s=2, max_connections=40, max_connections_per_client=30)
    # The supervisor gets few descriptors, as on a host with a low limit; the test itself needs many.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.prlimit(system.pid, resource.RLIMIT_NOFILE, (256, hard))
    if soft < 1024:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 1024), hard))
    baseline = fd_count(system.pid)
    # The flood goes on (200 connections at a time) until the system has been asked: at most `cap` connections
    # and `span` seconds (far more than the two commands take, so the flood is on while they run).
    cap, parallel, span = 100_000, 200, 45.0
    flood_ends = time.monotonic() + span
    asked = asyncio.Event()
    outcomes: Counter[str] = Counter()
    held_for: list[float] = []
    peak = baseline

    async def one(source: str) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        except OSError:
            outcomes["connect failed"] += 1
            return
        started = time.monotonic()
        try:
            writer.write(b"POST /hook HTTP/1.1\r\nHost: x\r\n")  # the head never ends
            data = await read_all(reader)
        finally:
            writer.close()
        if data.startswith(b"HTTP/1.1 503"):
            outcomes["refused"] += 1
        elif data == b"":
            outcomes["held, then closed"] += 1
            held_for.append(time.monotonic() - started)
        else:
            outcomes[f"other: {data[:40]!r}"] += 1

    async def worker(source: str) -> int:
        made = 0
        while not asked.is_set() and made < cap // parallel and time.monotonic() < flood_ends:
            await one(source)
            made += 1
        return made

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, fd_count(system.pid))
            await asyncio.sleep(0.02)

    flooding = asyncio.gather(*(worker("127.0.0.1" if index % 2 else "127.0.0.2") for index in range(parallel)))
    sampling = asyncio.ensure_future(sample())

    async def refusing() -> bool:
        return outcomes["refused"] > 0

    # While the flood goes on: the control socket and the agents answer.
    assert await eventually(refusing), "no connection was refused"
    sent = await asyncio.to_thread(system.cli, "send", "hooks", "during the flood")
    status = await asyncio.to_thread(system.cli, "status", "--json")
    flood_was_on = not flooding.done()
    asked.set()
    total = sum(await asyncio.wait_for(flooding, 50))
    sampling.cancel()

    assert sent.returncode == 0, sent.stderr
    assert "got: during the flood" in sent.stdout
    assert status.returncode == 0 and '"ready"' in status.stdout
    assert flood_was_on, f"the flood ended ({total} connections) before the system was asked"
    # Every connection had an outcome: refused at once with a 503, or held and closed at the head timeout.
    assert sum(outcomes.values()) == total and set(outcomes) == {"refused", "held, then closed"}, outcomes
    assert outcomes["refused"] > outcomes["held, then closed"] > 0
    assert max(held_for) >= 1.5  # (a lower bound per connection would count this loop's own delays)
    # The supervisor never held more than its connection limit (plus the CLI's own connections).
    assert peak <= baseline + 40 + 10, (baseline, peak)
    assert ready(system.status())
    url = f"http://127.0.0.1:{port}/hook?wait=true"
    async with aiohttp.ClientSession() as http, http.post(url, data=b"after the flood") as response:
        assert response.status == 200
        assert (await response.json())["content"] == "got: after the flood"


async def test_body_that_grows_when_encoded_is_refused_at_the_edge(systems) -> None:  # type: ignore[no-untyped-def]
    system, port = start_hook(systems, max_body_bytes=2 * 1024 * 1024)
    pids = {agent["name"]: agent["pid"] for agent in system.status()["agents"]}
    async with aiohttp.ClientSession() as http:
        # 1.5 MiB of control bytes: 9 MiB as JSON (\\u0001 each), over the 8 MiB frame limit.
        for _ in range(3):
            body = b"\x01" * (1536 * 1024)
            async with http.post(f"http://127.0.0.1:{port}/hook?wait=true", data=body) as response:
                assert response.status == 413
                assert "prompt too large" in (await response.json())["error"]
        # 1 MiB of nesting, a charset Python does not know: 400, the server carries on.
        hostile = [(b"[" * 1024 * 1024, "application/json"), (b"x", "text/plain; charset=no-such")]
        for body, content_type in hostile:
            headers = {"Content-Type": content_type}
            async with http.post(f"http://127.0.0.1:{port}/hook", data=body, headers=headers) as response:
                assert response.status == 400
        # 1.5 MiB of text is fine and reaches the agent whole.
        async with http.post(f"http://127.0.0.1:{port}/hook?wait=true", data=b"a" * (1536 * 1024)) as response:
            assert response.status == 200
            assert len((await response.json())["content"]) == len("got: ") + 1536 * 1024
    status = system.status()
    assert {agent["name"]: agent["pid"] for agent in status["agents"]} == pids, "the agent restarted"
    (trigger,) = system.request({"t": "triggers"})["triggers"]
    assert trigger["rejected"] == 5 and trigger["fired"] == 1


@pytest.mark.skipif(
    "max_queue" not in AgentConfig.model_fields, reason="needs per-agent max_queue (admission, issue 8)"
)
async def test_busy_agent_gets_429_with_retry_after(systems) -> None:  # type: ignore[no-untyped-def]
    system, port = start_hook(systems, agent="callback: rec:slow\nmax_queue: 1", env={"REC_SLOW": "3"})
    async with aiohttp.ClientSession() as http:

        async def post(index: int) -> tuple[int, str | None]:
            async with http.post(f"http://127.0.0.1:{port}/hook", data=f"run {index}".encode()) as response:
                return response.status, response.headers.get("Retry-After")

        replies = [await post(index) for index in range(5)]
    statuses = [status for status, _ in replies]
    assert statuses[0] == 202 and 429 in statuses, statuses
    assert all(retry is not None and int(retry) > 0 for status, retry in replies if status == 429)
    accepted = statuses.count(202)
    wait_until(lambda: len(got(system.config.parent)) == accepted, timeout=60, what="the accepted runs")
    (trigger,) = system.request({"t": "triggers"})["triggers"]
    assert trigger["rejected"] == statuses.count(429)
