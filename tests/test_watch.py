"""`llmling watch` and the event stream: attach to a running system, start one, JSON lines, slow readers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from llmling import AgentPool
from llmling.config import load_config
from llmling.ipc.peer import Peer, connect
from llmling.testing import TAG_ENV, llmling_command, tagged_processes, wait_gone
from tests._automation import RECORDER, wait_until, write_system

ECHO = """
agents:
  analyzer:
    callback: cb:echo
"""


class Lines:
    """The stdout lines of a process, read on a thread so a test can wait for one without blocking forever."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        assert process.stdout is not None
        self._thread = threading.Thread(target=self._read, args=(process.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 20.0) -> str:
        def found() -> str | None:
            return next((line for line in self.lines if text in line), None)

        return wait_until(found, timeout, what=f"{text!r} in the output:\n" + "\n".join(self.lines))


@contextlib.contextmanager
def watching(*args: str, env: dict[str, str] | None = None) -> Iterator[Lines]:
    process = subprocess.Popen(
        [*llmling_command(), "watch", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        yield Lines(process)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def test_attach_shows_events_and_ctrl_c_detaches(systems) -> None:  # type: ignore[no-untyped-def]
    system = systems.start(ECHO)
    with watching("--socket", str(system.socket)) as view:
        view.wait_for("attached")
        sent = system.cli("send", "analyzer", "hello there", "--json")
        trace_id = json.loads(sent.stdout)["trace_id"]
        started = view.wait_for("started")
        finished = view.wait_for("finished")
        assert "analyzer" in started and trace_id in started
        assert trace_id in finished and "echo: hello there" in finished and " s: " in finished
        view.process.send_signal(signal.SIGINT)
        assert view.process.wait(10) == 0
        assert "detached" in (view.process.stderr.read() if view.process.stderr else "")
    assert system.status()["agents"][0]["state"] == "ready", "detaching stopped the system"


def test_attach_json_lines(systems) -> None:  # type: ignore[no-untyped-def]
    system = systems.start(ECHO)
    with watching("--socket", str(system.socket), "--json") as view:
        view.wait_for('"subscribed"')
        system.cli("send", "analyzer", "as json")
        view.wait_for('"run_finished"')
        view.process.send_signal(signal.SIGINT)
        assert view.process.wait(10) == 0
    events = [json.loads(line) for line in view.lines]
    assert all(isinstance(event["ts"], float) for event in events)
    kinds = [event["event"] for event in events]
    assert kinds[0] == "subscribed" and "run_started" in kinds
    finished = next(event for event in events if event["event"] == "run_finished")
    assert finished["agent"] == "analyzer" and finished["content"] == "echo: as json" and finished["trace_id"]


def test_attach_ends_when_the_system_stops(systems) -> None:  # type: ignore[no-untyped-def]
    system = systems.start(ECHO)
    with watching("--socket", str(system.socket)) as view:
        view.wait_for("attached")
        assert system.cli("stop").returncode == 0
        view.wait_for("stopping")
        assert view.process.wait(20) == 0


def test_attach_path_stays_light(systems) -> None:  # type: ignore[no-untyped-def]
    system = systems.start(ECHO)
    probe = (
        "import atexit, sys\n"
        "heavy = ('pydantic', 'litellm', 'aiohttp', 'watchfiles', 'llmling.supervisor')\n"
        "atexit.register(lambda: sys.stderr.write('LOADED ' + ','.join(sorted(m for m in sys.modules "
        "if m.startswith(heavy))) + '\\n'))\n"
        "from llmling.cli.main import main\n"
        "main(['watch', '--socket', sys.argv[1]])\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", probe, str(system.socket)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    view = Lines(process)
    view.wait_for("attached")
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=10)
    loaded = next(line for line in err.splitlines() if line.startswith("LOADED"))
    assert loaded == "LOADED ", f"the attach path imported heavy modules: {loaded}"


def test_watch_starts_the_system_and_ctrl_c_stops_it(tmp_path: Path, short_dir: Path) -> None:
    config = write_system(
        tmp_path / "sys",
        """
        name: watched
        agents:
          reporter:
            callback: rec:record
            triggers:
              - {type: time, name: tick, interval_s: 0.3, prompt: report}
        """,
    )
    tag = f"watch-{os.getpid()}-{time.monotonic_ns()}"
    socket_path = short_dir / "s.sock"
    with watching(str(config), "--socket", str(socket_path), env={TAG_ENV: tag}) as view:
        view.wait_for("ready")
        fired = view.wait_for("tick fired")
        assert "reporter" in fired and "trace" in fired
        view.wait_for("got: report")
        assert socket_path.exists()
        # A second watch attaches to it instead of starting another system.
        with watching("--config", str(config), "--socket", str(socket_path), "--json") as second:
            second.wait_for('"subscribed"')
            second.wait_for('"trigger_fired"')
            second.process.send_signal(signal.SIGINT)
            assert second.process.wait(10) == 0
        assert tagged_processes(tag), "the system's processes are gone too early"
        view.process.send_signal(signal.SIGINT)
        assert view.process.wait(30) == 0
        view.wait_for("stopping")
    assert wait_gone(tag, 10.0) == [], "processes survived `watch`"
    assert not socket_path.exists()


async def test_slow_subscriber_is_dropped_not_waited_for(tmp_path: Path, sock_path: Path) -> None:
    path = write_system(tmp_path / "sys", "agents:\n  big:\n    callback: rec:record\n")
    assert (path.parent / "rec.py").read_text() == RECORDER
    frames: list[dict] = []
    async with AgentPool(load_config(path), socket=sock_path) as pool:
        pool.supervisor.events.limit = 64 * 1024
        peer: Peer = await connect(sock_path, lambda _, message: frames.append(message))
        subscribed = asyncio.Event()
        peer.start_request({"t": "subscribe"}, on_chunk=lambda chunk: (frames.append(chunk), subscribed.set()))
        await subscribed.wait()
        assert peer.transport is not None
        peer.transport.pause_reading()  # a subscriber that reads nothing
        prompt = "x" * 20_000
        started = time.monotonic()
        for _ in range(60):  # each run's events carry 40 kB: far more than the socket and the limit hold
            await pool.supervisor.router.send("big", prompt)
        assert time.monotonic() - started < 30
        subscription = pool.supervisor.events.subscriptions[0]
        assert subscription.dropped > 0
        peer.transport.resume_reading()
        await asyncio.sleep(0.5)
        await pool.supervisor.router.send("big", "after")  # the next event goes out, after a `dropped` notice

        def saw_after() -> bool:
            return any(e.get("content") == "got: after" for e in events_of(frames))

        for _ in range(100):
            if saw_after():
                break
            await asyncio.sleep(0.05)
        peer.close()
    dropped = [event for event in events_of(frames) if event["event"] == "dropped"]
    assert dropped and dropped[0]["count"] > 0
    assert saw_after(), "the subscriber got nothing after it caught up"


def events_of(frames: list[dict]) -> list[dict]:
    return [frame["event"] for frame in frames if isinstance(frame.get("event"), dict)]


CHAIN = """
agents:
  analyzer:
    callback: cb:echo
    connections: [summarizer]
  summarizer:
    callback: cb:upper
    connections: [archivist]
  archivist:
    callback: cb:echo
"""


def test_lineage_forwarded_runs_under_their_parents(systems) -> None:  # type: ignore[no-untyped-def]
    system = systems.start(CHAIN)
    with (
        watching("--socket", str(system.socket), "--json") as as_json,
        watching("--socket", str(system.socket)) as view,
    ):
        as_json.wait_for('"subscribed"')
        view.wait_for("attached")
        sent = json.loads(system.cli("send", "analyzer", "look here", "--json", "--wait").stdout)
        as_json.wait_for('"agent": "archivist", "content"')
        view.wait_for("finished", timeout=20)
        wait_until(lambda: sum("finished" in line for line in view.lines) >= 3, 20, "three finished runs")
    started = {e["agent"]: e for e in map(json.loads, as_json.lines) if e["event"] == "run_started"}
    assert started["analyzer"]["parent_id"] is None and started["analyzer"]["prompt"] == "look here"
    assert started["summarizer"]["parent_id"] == sent["id"]
    assert started["summarizer"]["prompt"] == "echo: look here"
    assert started["archivist"]["parent_id"] == started["summarizer"]["id"]
    assert started["archivist"]["prompt"] == "ECHO: LOOK HERE"
    lines = [line[10:] for line in view.lines if " run " in line]  # without the time stamp
    first = {name: next(line for line in lines if "started" in line and name in line) for name in started}
    assert first["analyzer"].startswith("analyzer ") and first["analyzer"].endswith(": look here")
    assert first["summarizer"].startswith("└ summarizer ") and f"from {sent['id']}" in first["summarizer"]
    assert first["archivist"].startswith("  └ archivist ")
    finished = next(line for line in lines if "finished" in line and "archivist" in line)
    assert finished.startswith("  └ archivist ")


def test_event_prompt_is_bounded(systems) -> None:  # type: ignore[no-untyped-def]
    from llmling.supervisor.router import EVENT_PROMPT_CHARS

    system = systems.start(ECHO)
    with watching("--socket", str(system.socket), "--json") as view:
        view.wait_for('"subscribed"')
        system.cli("send", "analyzer", "-", input="x" * (EVENT_PROMPT_CHARS * 3))
        line = view.wait_for('"run_started"')
    assert json.loads(line)["prompt"] == "x" * EVENT_PROMPT_CHARS


async def test_a_batch_subscription_gets_the_events_in_order_several_to_a_chunk(
    tmp_path: Path, sock_path: Path
) -> None:
    """`subscribe` with `batch`: chunks carry `events` lists; every run's events arrive, in order (a start whose
    outcome is in the same chunk is left out: the outcome carries it), and a subscriber of one agent gets only
    that agent's (and the system's) events."""
    path = write_system(
        tmp_path / "sys", "agents:\n  a:\n    callback: rec:record\n  b:\n    callback: rec:record\n"
    )
    chunks: list[dict] = []
    only_b: list[dict] = []
    subscribed, all_finished = asyncio.Event(), asyncio.Event()

    def on_chunk(chunk: dict) -> None:
        chunks.append(chunk)
        subscribed.set()
        if sum(e["event"] == "run_finished" for e in batch_events(chunks)) == 10:
            all_finished.set()

    async with AgentPool(load_config(path), socket=sock_path) as pool:
        peer: Peer = await connect(sock_path, lambda _, message: None)
        peer.start_request({"t": "subscribe", "batch": True}, on_chunk)
        peer.start_request({"t": "subscribe", "batch": True, "agents": ["b"]}, only_b.append)
        await asyncio.wait_for(subscribed.wait(), 30)
        await asyncio.gather(*(pool.supervisor.router.send("a" if n % 2 else "b", f"m{n}") for n in range(10)))
        await asyncio.wait_for(all_finished.wait(), 30)
        peer.close()
    events = batch_events(chunks)
    assert events[0]["event"] == "subscribed"
    assert any(len(chunk.get("events") or ()) > 1 for chunk in chunks), "several events share a chunk"
    coalesced = 0
    for n in range(10):
        kinds = [e["event"] for e in events if e.get("prompt") == f"m{n}"]
        assert kinds in (["run_started", "run_finished"], ["run_finished"]), (n, kinds)
        coalesced += kinds == ["run_finished"]
        finished = next(e for e in events if e.get("prompt") == f"m{n}" and e["event"] == "run_finished")
        assert {"agent", "id", "trace_id", "parent_id", "attempt", "elapsed_total", "ts"} <= finished.keys()
    assert coalesced, "fast runs cost one event each"
    assert {e.get("agent") for e in batch_events(only_b) if "agent" in e} == {"b"}


def batch_events(chunks: list[dict]) -> list[dict]:
    return [event for chunk in chunks for event in chunk.get("events") or [chunk.get("event")] if event]


def test_a_start_is_left_out_of_a_batch_only_with_its_own_outcome() -> None:
    """coalesced(): only a `run_started` followed by the `run_finished` of the same id and attempt goes; a failed
    attempt's start, a start without its outcome yet, and every other event stay, in order."""
    from llmling.supervisor.events import coalesced

    def run(kind: str, run_id: str, attempt: int) -> dict:
        return {"event": kind, "id": run_id, "attempt": attempt}

    events = [
        run("run_started", "r1", 1),
        {"event": "agent_state", "agent": "a", "state": "busy"},
        run("run_started", "r2", 1),
        run("run_retry", "r2", 1),
        run("run_started", "r2", 2),
        run("run_finished", "r1", 1),
        run("run_finished", "r2", 2),
        run("run_started", "r3", 1),
        run("run_started", "r4", 1),
        run("run_failed", "r4", 1),
    ]
    kept = coalesced(events)
    assert kept == [events[1], events[2], events[3], events[5], events[6], events[7], events[8], events[9]]
    quiet = [run("run_started", "r5", 1), {"event": "agent_state"}]
    assert coalesced(quiet) is quiet
