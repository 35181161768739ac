"""Restart intensity: the first restart is immediate, repeated ones back off with full jitter, too many within
the period mark the agent failed until `llmling restart`; a restart lets runs in flight finish."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from llmling import AgentPool
from llmling.errors import AgentRunError
from llmling.supervisor.intensity import BACKOFF_BASE, BACKOFF_CAP, RestartIntensity
from tests._automation import wait_until
from tests._slots import agent, pool_config, until
from tests.conftest import Systems

CALLBACKS = """
import asyncio
import os


def pid(prompt):
    return str(os.getpid())


async def slow_pid(prompt):
    await asyncio.sleep(1.0)
    return str(os.getpid())
"""


# -- the policy -------------------------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_first_restart_is_immediate_then_full_jitter_up_to_an_exponential_cap() -> None:
    clock = Clock()
    highest = RestartIntensity(10, 60.0, clock=clock, jitter=lambda: 1.0)
    lowest = RestartIntensity(10, 60.0, clock=clock, jitter=lambda: 0.0)
    assert [highest.crashed() for _ in range(9)] == [
        0.0,
        *(min(BACKOFF_CAP, BACKOFF_BASE * 2**n) for n in range(1, 9)),
    ]
    assert [lowest.crashed() for _ in range(9)] == [0.0] * 9  # full jitter: anywhere from 0
    # A failed start is never retried at once.
    assert RestartIntensity(5, 60.0, clock=clock, jitter=lambda: 0.0).crashed(start_failed=True) == BACKOFF_BASE


def test_more_than_max_restarts_within_the_period_gives_up_and_the_window_slides() -> None:
    clock = Clock()
    intensity = RestartIntensity(2, 60.0, clock=clock, jitter=lambda: 0.5)
    assert intensity.crashed() == 0.0
    clock.now += 10
    assert intensity.crashed() == 0.5 * BACKOFF_BASE * 2
    clock.now += 10
    assert intensity.crashed() is None  # a third restart within 60 s is one too many
    intensity.reset()
    assert intensity.crashed() == 0.0
    clock.now += 61  # the earlier crash left the window
    assert intensity.crashed() == 0.0
    assert intensity.recent == 1


def test_jitter_spreads_restarts() -> None:
    delays = [RestartIntensity(5, 60.0, clock=Clock()) for _ in range(200)]
    for intensity in delays:
        intensity.crashed()
    seconds = [intensity.crashed() for intensity in delays]
    assert all(value is not None and 0.0 <= value <= BACKOFF_BASE * 2 for value in seconds)
    assert len(set(seconds)) > 150  # not lockstep


# -- real processes ---------------------------------------------------------------------------------------------
CONFIG = """
shutdown_timeout: 1
agents:
  victim:
    callback: cb:pid
    restart: {max_restarts: 2, period: 60}
  echo: {callback: cb:echo}
"""


def test_an_agent_killed_too_often_is_failed_until_llmling_restart(systems: Systems) -> None:
    system = systems.start(CONFIG)
    for crash in range(1, 4):
        killed = agent(system, "victim")["pid"]
        os.kill(killed, signal.SIGKILL)
        if crash < 3:
            wait_until(
                lambda killed=killed: (now := agent(system, "victim"))["state"] == "ready" and now["pid"] != killed
            )
    wait_until(lambda: agent(system, "victim")["gave_up"])
    failed = agent(system, "victim")
    assert failed["state"] == "failed"
    assert failed["restarts"] == 2
    assert "gave up after 3 crashes within 60 s" in failed["error"]
    refused = system.cli("send", "victim", "hello?")
    assert refused.returncode == 1
    assert "gave up" in refused.stderr and "llmling restart victim" in refused.stderr
    assert system.cli("send", "echo", "fine").stdout == "echo: fine\n"  # the others are not touched

    restarted = system.cli("restart", "victim")
    assert restarted.returncode == 0, restarted.stderr
    back = agent(system, "victim")
    assert (back["state"], back["gave_up"]) == ("ready", False)
    assert restarted.stdout == f"restarted victim (pid {back['pid']})\n"
    assert system.cli("send", "victim", "?").stdout.strip() == str(back["pid"])
    # The count starts again: one more crash is restarted, not failed.
    os.kill(back["pid"], signal.SIGKILL)
    wait_until(lambda: (now := agent(system, "victim"))["state"] == "ready" and now["pid"] != back["pid"])
    assert not agent(system, "victim")["gave_up"]


def test_an_agent_whose_callback_cannot_be_imported_is_not_retried_forever(systems: Systems) -> None:
    system = systems.start(
        """
        agents:
          broken: {callback: cb:no_such_function, restart: {max_restarts: 2, period: 60}}
          echo: {callback: cb:echo}
        """,
        until=lambda status: any(item["gave_up"] for item in status["agents"]),
    )
    broken = agent(system, "broken")
    assert (broken["state"], broken["restarts"]) == ("failed", 2)
    assert "no_such_function" in broken["error"]
    # `llmling restart` tries once more, and says why it failed.
    again = system.cli("restart", "broken")
    assert again.returncode == 1
    assert "did not start" in again.stderr and "no_such_function" in again.stderr
    unknown = system.cli("restart", "nobody")
    assert unknown.returncode == 1
    assert "unknown agent 'nobody'" in unknown.stderr


async def test_the_first_restart_after_a_crash_is_immediate(tmp_path: Path) -> None:
    config = pool_config(
        tmp_path,
        {"rst": CALLBACKS},
        "victim: {callback: 'rst:pid', restart: {max_restarts: 1, period: 60}}\n",
        shutdown_timeout=5,
    )
    events: list[dict[str, Any]] = []
    async with AgentPool(config) as pool:
        pool.supervisor.add_listener(events.append)
        slot = pool.supervisor.slots["victim"]
        first = slot.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await until(lambda: slot.state == "ready" and slot.pid != first)
        states = [(e["state"], e.get("delay")) for e in events if e["event"] == "agent_state"]
        assert states == [("restarting", 0.0), ("starting", None), ("ready", None)]
        # One more crash within the period is one too many for max_restarts: 1.
        second = slot.pid
        assert second is not None
        os.kill(second, signal.SIGKILL)
        await until(lambda: slot.gave_up)
        assert [e for e in events if e["event"] == "agent_state"][-1]["state"] == "failed"
        with pytest.raises(AgentRunError) as caught:
            await pool.get_agent("victim").run("hello?")
        assert caught.value.kind == "unavailable"


async def test_a_restart_lets_runs_in_flight_finish_and_queued_runs_go_to_the_fresh_process(
    tmp_path: Path,
) -> None:
    config = pool_config(tmp_path, {"rst": CALLBACKS}, "worker: {callback: 'rst:slow_pid'}\n", shutdown_timeout=5)
    async with AgentPool(config) as pool:
        slot = pool.supervisor.slots["worker"]
        worker = pool.get_agent("worker")
        old = slot.pid
        in_flight = asyncio.create_task(worker.run("first"))
        await until(lambda: slot.running == 1)
        restart = asyncio.create_task(slot.restart(grace=30.0))
        await until(lambda: not slot.takes_runs)
        queued = asyncio.create_task(worker.run("second"))
        assert (await in_flight).content == str(old)  # finished on the old process
        await restart
        assert slot.state == "ready" and slot.pid != old
        assert (await queued).content == str(slot.pid)  # waited for the fresh process
        assert slot.restarts == 1 and not slot.gave_up
