"""Graceful shutdown end to end: in-flight runs finish and their clients get the reply, new work is refused,
a second signal skips the drain, the exit status is 0 (3 when accepted runs were left in the journal), and no
process survives."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import aiohttp
import pytest

from llmling.ipc.client import Client
from llmling.testing import TAG_ENV, llmling_command, wait_gone
from tests._automation import free_port, wait_until

SLOW = """
shutdown_timeout: {timeout}
agents:
  slowpoke:
    callback: cb:slow
    env_passthrough: [SLOW_SECONDS]
"""


SLOW_CALLBACK = """
import asyncio


async def slow(prompt):
    await asyncio.sleep(1.5)
    return "late"
"""


def in_flight(system) -> bool:  # type: ignore[no-untyped-def]
    return bool(system.status()["pending_runs"])


def send_in_background(system, text: str) -> subprocess.Popen[str]:  # type: ignore[no-untyped-def]
    process = subprocess.Popen(
        [*llmling_command(), "send", "slowpoke", text, "--json", "--socket", str(system.socket)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=system.env,
    )
    wait_until(lambda: in_flight(system), what="the run to be in flight")
    return process


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_a_run_lets_it_finish(systems, sig: signal.Signals) -> None:  # type: ignore[no-untyped-def]
    system = systems.start(SLOW.format(timeout=20), env={"SLOW_SECONDS": "1.5"})
    sender = send_in_background(system, "finish me")
    began = time.monotonic()
    system.process.send_signal(sig)
    out, err = sender.communicate(timeout=30)
    assert sender.returncode == 0, err
    assert '"content": "late"' in out
    assert system.process.wait(30) == 0
    assert time.monotonic() - began >= 1.0  # it did wait for the run
    assert wait_gone(system.tag, 10.0) == []
    assert not system.socket.exists()


def test_stop_request_during_a_run_lets_it_finish(systems) -> None:  # type: ignore[no-untyped-def]
    system = systems.start(SLOW.format(timeout=20), env={"SLOW_SECONDS": "1.0"})
    sender = send_in_background(system, "finish me")
    stop = system.cli("stop")
    assert stop.returncode == 0 and "stopped" in stop.stdout
    out, _ = sender.communicate(timeout=30)
    assert sender.returncode == 0 and '"content": "late"' in out
    assert system.process.wait(30) == 0
    assert wait_gone(system.tag, 10.0) == []


def test_new_sends_are_refused_during_the_drain(systems) -> None:  # type: ignore[no-untyped-def]
    system = systems.start(SLOW.format(timeout=20), env={"SLOW_SECONDS": "2.0"})
    with Client(system.socket, timeout=30) as client:
        sender = send_in_background(system, "in flight")
        system.process.send_signal(signal.SIGINT)
        time.sleep(0.3)
        reply = client.request({"t": "send", "agent": "slowpoke", "prompt": "too late"})
        assert reply["t"] == "error" and "shutting down" in reply["error"]
        started = client.request({"t": "background_start", "agent": "slowpoke", "prompt": "x", "interval": 1})
        assert started["t"] == "error" and "shutting down" in started["error"]
    refused = system.cli("send", "slowpoke", "new connection")
    assert refused.returncode != 0
    out, _ = sender.communicate(timeout=30)
    assert '"content": "late"' in out
    assert system.process.wait(30) == 0


def test_second_signal_skips_the_drain(systems) -> None:  # type: ignore[no-untyped-def]
    system = systems.start(SLOW.format(timeout=60), env={"SLOW_SECONDS": "60"})
    sender = send_in_background(system, "never finishes")
    system.process.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert system.process.poll() is None, "the first signal did not drain"
    began = time.monotonic()
    system.process.send_signal(signal.SIGINT)
    # The run stays in the journal for the next `up`: exit 3 says work was left.
    assert system.process.wait(20) == 3
    assert time.monotonic() - began < 15
    _, err = sender.communicate(timeout=20)
    assert sender.returncode != 0 and err.strip()
    assert wait_gone(system.tag, 10.0) == []


def test_drain_ends_at_shutdown_timeout(systems) -> None:  # type: ignore[no-untyped-def]
    system = systems.start(SLOW.format(timeout=1), env={"SLOW_SECONDS": "60"})
    sender = send_in_background(system, "too slow")
    began = time.monotonic()
    system.process.send_signal(signal.SIGTERM)
    assert system.process.wait(20) == 3  # the run is left in the journal
    assert 0.9 <= time.monotonic() - began < 15
    _, err = sender.communicate(timeout=20)
    assert sender.returncode != 0 and "slowpoke" in err
    assert wait_gone(system.tag, 10.0) == []


def test_ctrl_c_in_a_terminal_reaches_the_whole_group(tmp_path: Path, short_dir: Path) -> None:
    """Ctrl+C signals every process of the foreground group: agents and the forkserver must leave the
    decision to the supervisor, so the run in flight still finishes."""
    (tmp_path / "cb.py").write_text(
        "import asyncio\n\nasync def slow(prompt):\n    await asyncio.sleep(1.5)\n    return 'late'\n"
    )
    config = tmp_path / "system.yml"
    config.write_text(SLOW.format(timeout=20))
    socket = short_dir / "s.sock"
    tag = uuid.uuid4().hex
    env = {**os.environ, TAG_ENV: tag}
    env.pop("LLMLING_SOCKET", None)
    up = subprocess.Popen(
        [*llmling_command(), "up", str(config), "--socket", str(socket)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        wait_until(lambda: socket.exists() and _ready(socket), what="the system")
        sender = subprocess.Popen(
            [*llmling_command(), "send", "slowpoke", "x", "--socket", str(socket)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_until(lambda: _pending(socket), what="the run in flight")
        os.killpg(up.pid, signal.SIGINT)
        out, err = sender.communicate(timeout=30)
        assert sender.returncode == 0 and out.strip() == "late", err
        assert up.wait(30) == 0
    finally:
        if up.poll() is None:
            up.kill()
        up.wait(10)
    assert wait_gone(tag, 10.0) == []


def _ready(socket: Path) -> bool:
    try:
        with Client(socket, timeout=5) as client:
            return all(agent["state"] == "ready" for agent in client.request({"t": "status"})["agents"])
    except OSError:
        return False


def _pending(socket: Path) -> bool:
    with Client(socket, timeout=5) as client:
        return bool(client.request({"t": "status"})["pending_runs"])


async def test_webhook_wait_in_flight_gets_its_reply(systems) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    system = systems.start(
        f"""
        shutdown_timeout: 20
        agents:
          slowpoke:
            callback: cb:slow
            env_passthrough: [SLOW_SECONDS]
            triggers:
              - {{type: webhook, name: hook, port: {port}, path: /hook}}
        """,
        env={"SLOW_SECONDS": "1.5"},
    )
    async with aiohttp.ClientSession() as http:
        request = http.post(f"http://127.0.0.1:{port}/hook?wait=true", data=b"finish me")
        pending = asyncio.ensure_future(request)
        await asyncio.to_thread(wait_until, lambda: in_flight(system), 20.0, "the run in flight")
        system.process.send_signal(signal.SIGTERM)
        response = await pending
        assert response.status == 200
        assert (await response.json())["content"] == "late"
        response.release()
        with pytest.raises(aiohttp.ClientConnectionError):  # no longer listening
            async with http.post(f"http://127.0.0.1:{port}/hook", data=b"late") as refused:
                await refused.read()
    assert system.process.wait(30) == 0
    assert wait_gone(system.tag, 10.0) == []
