"""The run contract at the agent's end (ipc/messages.py): a real agent process, forked by the forkserver from a
real AgentSpec (its pydantic AgentConfig pickled through it), and this test in the supervisor's place on a real
Unix socket, so every frame can be sent and checked as it is on the wire: redeliveries (same id, attempt + 1),
error kinds, run timeouts, malformed frames, and pings answered while a sync run is in flight."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from llmling.agent_proc import preload
from llmling.agent_proc.spec import AgentSpec
from llmling.config import AgentConfig
from llmling.ipc.messages import RunFrame
from llmling.ipc.peer import Peer
from llmling.ipc.server import UnixServer
from llmling.supervisor.spawner import Spawner
from tests.conftest import short_tempdir

CALLBACK = """
import dataclasses
import json
import time

from llmling import RunContext


def handle(prompt, run: RunContext):
    if prompt == "boom":
        raise ValueError("boom")
    if prompt.startswith("sleep "):
        time.sleep(float(prompt.split()[1]))  # sync: on a worker thread
    return json.dumps(dataclasses.asdict(run))
"""


class SupervisorEnd:
    """The supervisor's side of one agent connection: answers `hello`, collects what the agent reports."""

    def __init__(self, path: Path) -> None:
        self.server = UnixServer(path, self.on_message)
        loop = asyncio.get_running_loop()
        self.peer: asyncio.Future[Peer] = loop.create_future()
        self.ready: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.components: list[tuple[str, str]] = []

    def on_message(self, peer: Peer, message: dict[str, Any]) -> None:
        if message["t"] == "hello":
            peer.reply(message, {"t": "ok"})
            self.peer.set_result(peer)
        elif message["t"] == "component":
            self.components.append((message["component"], message["state"]))
        elif message["t"] in ("ready", "failed") and not self.ready.done():
            self.ready.set_result(message)


@contextlib.asynccontextmanager
async def agent_process(tmp_path: Path, **config: Any) -> AsyncIterator[Peer]:
    (tmp_path / "frames_cb.py").write_text(CALLBACK)
    end = SupervisorEnd(short_tempdir() / "s.sock")
    await end.server.start()
    spawner = Spawner(preload.modules(needs_llm=False))
    spawner.start()
    spec = AgentSpec(
        name="frames",
        config=AgentConfig(callback="frames_cb:handle", **config),
        socket_path=str(end.server.path),
        token="t0ken",
        base_dir=str(tmp_path),
    )
    process = await spawner.spawn(spec)
    try:
        peer = await asyncio.wait_for(end.peer, 30)
        ready = await asyncio.wait_for(end.ready, 30)
        assert ready == {"t": "ready", "pid": process.pid}
        assert end.components == [("backend", "starting"), ("backend", "ready")]
        yield peer
        peer.send({"t": "shutdown"})
        await asyncio.to_thread(process.join, 10)
        assert process.exitcode == 0
    finally:
        if process.is_alive():
            process.kill()
            await asyncio.to_thread(process.join, 10)
        await end.server.close()
        spawner.close()


def run_frame(run_id: str, prompt: str, attempt: int = 1, timeout: float | None = None) -> RunFrame:
    return {
        "t": "run",
        "id": run_id,
        "prompt": prompt,
        "trace_id": "trace-1",
        "parent_id": None,
        "hops": 0,
        "stream": False,
        "attempt": attempt,
        "timeout": timeout,
    }


async def test_redeliveries_error_kinds_and_timeouts_on_the_wire(tmp_path: Path) -> None:
    async with agent_process(tmp_path) as peer:
        first = await peer.start_request(run_frame("run-7", "hi"))
        assert first["t"] == "result" and first["re"] == "run-7"
        assert json.loads(first["content"]) == {
            "id": "run-7",
            "attempt": 1,
            "trace_id": "trace-1",
            "parent_id": None,
            "agent": "frames",
            "hops": 0,
        }
        # A redelivery: the same run id with attempt + 1 (what idempotent user code keys on).
        again = await peer.start_request(run_frame("run-7", "hi", attempt=2))
        assert (json.loads(again["content"])["id"], json.loads(again["content"])["attempt"]) == ("run-7", 2)

        failed = await peer.start_request(run_frame("run-8", "boom"))
        assert failed == {"t": "error", "re": "run-8", "error": "ValueError: boom", "kind": "error"}

        timed_out = await peer.start_request(run_frame("run-9", "sleep 1.0", timeout=0.2))
        assert timed_out == {"t": "error", "re": "run-9", "error": "run timed out after 0.2 s", "kind": "timeout"}

        # A frame without a field the contract requires is answered, and the agent serves on.
        malformed: dict[str, Any] = dict(run_frame("run-10", "hi"))
        del malformed["attempt"]
        bad = await peer.start_request(malformed)
        assert (bad["t"], bad["kind"]) == ("error", "error") and "attempt" in bad["error"]
        assert (await peer.start_request(run_frame("run-11", "hi")))["t"] == "result"


async def test_pings_are_answered_while_a_sync_run_is_in_flight(tmp_path: Path) -> None:
    async with agent_process(tmp_path) as peer:
        run = peer.start_request(run_frame("run-1", "sleep 2.0"))
        pongs = 0
        while not run.done():
            pong = await peer.request({"t": "ping"})
            assert pong["t"] == "pong"
            pongs += 1 if not run.done() else 0
            await asyncio.sleep(0.05)
        assert (await run)["t"] == "result"
        assert pongs >= 3  # answered again and again while the sync callback held its thread
