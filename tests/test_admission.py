"""Admission and pacing in the slot: `max_queue` (busy at every edge), `concurrency`, `run_timeout`.

Real agent processes; the tests wait on counts the slot reports (`queued`, `running`), never on sleeps.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from llmling import AgentPool
from llmling.errors import AgentBusyError, AgentRunError
from llmling.testing import llmling_command
from tests._automation import wait_until
from tests._slots import agent, cancel_all, pool_config, until
from tests.conftest import Systems

CALLBACKS = """
import asyncio
import os
import time


async def hold(prompt):
    await asyncio.sleep(60)
    return "late"


async def timed(prompt):
    began = time.time()
    await asyncio.sleep(1.0)
    return f"{began} {time.time()}"


async def stubborn(prompt):
    # Ignores cancellation: a run_timeout cannot end it, only the end of its process can.
    while True:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            pass


async def blocking(prompt):
    time.sleep(0.1)  # blocks the agent's event loop, yet each reply goes out
    return "done"


def pid(prompt):
    return str(os.getpid())
"""


# -- max_queue --------------------------------------------------------------------------------------------------
def test_a_send_past_max_queue_fails_at_once_with_busy(systems: Systems) -> None:
    system = systems.start(
        """
        shutdown_timeout: 1
        agents:
          slow: {callback: cb:slow, max_queue: 2}
          echo: {callback: cb:echo}
        """,
        env={"SLOW_SECONDS": "60"},
    )
    command = [*llmling_command(), "send", "slow", "wait", "--socket", str(system.socket)]
    senders = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(3)]
    try:
        wait_until(lambda: agent(system, "slow")["running"] == 1 and agent(system, "slow")["queued"] == 2)
        refused = system.cli("send", "slow", "one more", timeout=20)
        assert refused.returncode == 1
        assert refused.stdout == ""
        assert refused.stderr.strip().splitlines() == ["Error: agent slow is busy (2 queued)"]
        # The other agent is not affected, and the busy one still has its three runs.
        assert system.cli("send", "echo", "fine").stdout == "echo: fine\n"
        assert (agent(system, "slow")["running"], agent(system, "slow")["queued"]) == (1, 2)
    finally:
        for sender in senders:
            sender.kill()
            sender.wait()


async def test_the_python_api_raises_agent_busy_error(tmp_path: Path) -> None:
    config = pool_config(
        tmp_path, {"adm": CALLBACKS}, "slow: {callback: 'adm:hold', max_queue: 1}\n", shutdown_timeout=0
    )
    async with AgentPool(config) as pool:
        slow = pool.get_agent("slow")
        slot = pool.supervisor.slots["slow"]
        runs = [asyncio.create_task(slow.run(f"run {n}")) for n in range(2)]
        await until(lambda: slot.running == 1 and slot.queued == 1)
        with pytest.raises(AgentBusyError) as caught:
            await slow.run("one more")
        assert str(caught.value) == "agent slow is busy (1 queued)"
        assert caught.value.kind == "busy"
        assert isinstance(caught.value, AgentRunError)
        assert slot.queued == 1  # the refused run was never queued
        await cancel_all(runs)


async def test_triggers_and_background_ticks_count_a_full_queue_as_a_drop(tmp_path: Path) -> None:
    watched = tmp_path / "inbox"
    watched.mkdir()
    config = pool_config(
        tmp_path,
        {"adm": CALLBACKS},
        """
        slow:
          callback: adm:hold
          max_queue: 1
          triggers:
            - {type: time, name: tick, interval_s: 0.05, enabled: false}
            - {type: file, name: inbox, paths: [inbox], debounce_ms: 10, enabled: false}
        """,
        shutdown_timeout=0,
    )
    events: list[dict[str, Any]] = []
    async with AgentPool(config) as pool:
        supervisor = pool.supervisor
        supervisor.add_listener(events.append)
        slot = supervisor.slots["slow"]
        slow = pool.get_agent("slow")
        runs = [asyncio.create_task(slow.run(f"fill {n}")) for n in range(2)]
        await until(lambda: slot.running == 1 and slot.queued == 1)
        supervisor.triggers.set_enabled("slow", "tick", True)
        supervisor.triggers.set_enabled("slow", "inbox", True)
        await slow.run_in_background("tick", interval=0.05)
        (watched / "a.txt").write_text("x")

        def dropped(event: str, **fields: Any) -> list[dict[str, Any]]:
            return [e for e in events if e["event"] == event and all(e.get(k) == v for k, v in fields.items())]

        await until(lambda: len(dropped("trigger_skipped", kind="time", reason="busy", queued=1)) >= 2)
        await until(lambda: len(dropped("trigger_skipped", kind="file", reason="busy", queued=1)) >= 1)
        await until(lambda: len(dropped("background_skipped", reason="busy")) >= 2)
        assert not dropped("trigger_fired") and not dropped("background_run")
        assert supervisor.triggers.get("slow", "tick").skipped >= 2
        assert supervisor.triggers.get("slow", "tick").fired == 0
        assert (slot.running, slot.queued) == (1, 1)  # nothing past max_queue was accepted
        await slow.stop()
        await cancel_all(runs)


# -- concurrency ------------------------------------------------------------------------------------------------
async def test_the_slot_sends_at_most_concurrency_runs_to_the_process(tmp_path: Path) -> None:
    config = pool_config(
        tmp_path, {"adm": CALLBACKS}, "slow: {callback: 'adm:hold', concurrency: 2}\n", shutdown_timeout=0
    )
    async with AgentPool(config) as pool:
        slow = pool.get_agent("slow")
        slot = pool.supervisor.slots["slow"]
        highest = 0

        def watch(_: dict[str, Any]) -> None:
            nonlocal highest
            highest = max(highest, slot.running)

        pool.supervisor.add_listener(watch)
        runs = [asyncio.create_task(slow.run(f"run {n}")) for n in range(5)]
        await until(lambda: slot.running == 2 and slot.queued == 3)
        assert highest <= 2
        await cancel_all(runs)


# -- run_timeout ------------------------------------------------------------------------------------------------
async def test_a_hung_run_ends_with_a_timeout_error(tmp_path: Path) -> None:
    config = pool_config(
        tmp_path, {"adm": CALLBACKS}, "hung: {callback: 'adm:hold', run_timeout: 0.5}\n", shutdown_timeout=0
    )
    async with AgentPool(config) as pool:
        with pytest.raises(AgentRunError) as caught:
            await pool.get_agent("hung").run("anyone?")
        assert caught.value.kind == "timeout"
        assert "timed out after 0.5 s" in caught.value.cause


def test_a_run_that_ignores_its_timeout_gets_its_process_replaced(systems: Systems) -> None:
    system = systems.start(
        """
        shutdown_timeout: 1
        agents:
          # One attempt: a timeout is otherwise redelivered (retry.on), each one replacing the process again.
          stubborn: {callback: "adm:stubborn", run_timeout: 0.5, retry: {max_attempts: 1}}
          echo: {callback: cb:echo}
        """,
        modules={"adm": CALLBACKS},
    )
    before = agent(system, "stubborn")["pid"]
    done = system.cli("send", "stubborn", "never ends", timeout=40)
    assert done.returncode == 1
    assert "timed out after 0.5 s" in done.stderr
    wait_until(
        lambda: agent(system, "stubborn")["state"] == "ready" and agent(system, "stubborn")["pid"] != before
    )
    assert agent(system, "stubborn")["restarts"] == 1
    assert "replacing process" in system.log_text()
    assert agent(system, "echo")["restarts"] == 0


# -- the heartbeat judges only a blocked loop -------------------------------------------------------------------
async def test_an_agent_busy_with_a_backlog_is_not_killed_by_the_heartbeat(tmp_path: Path) -> None:
    # Each run blocks the agent's loop for 0.1 s; 8 at once block it for 0.8 s in a row, longer than the
    # heartbeat timeout, while their replies keep coming.
    config = pool_config(
        tmp_path,
        {"adm": CALLBACKS},
        "busy: {callback: 'adm:blocking', concurrency: 8}\n",
        heartbeat_interval=0.1,
        heartbeat_timeout=0.5,
    )
    async with AgentPool(config) as pool:
        slot = pool.supervisor.slots["busy"]
        before = slot.pid
        busy = pool.get_agent("busy")
        replies = await asyncio.gather(*(busy.run(f"run {n}") for n in range(40)))
        assert [reply.content for reply in replies] == ["done"] * 40
        assert (slot.pid, slot.restarts) == (before, 0)


async def test_a_late_supervisor_loop_does_not_kill_its_agents(tmp_path: Path) -> None:
    config = pool_config(
        tmp_path,
        {"adm": CALLBACKS},
        "idle: {callback: 'adm:pid'}\n",
        heartbeat_interval=0.1,
        heartbeat_timeout=0.5,
    )
    async with AgentPool(config) as pool:
        slot = pool.supervisor.slots["idle"]
        before = slot.pid
        for _ in range(3):
            time.sleep(2.0)  # noqa: ASYNC251  (on purpose) the supervisor's own loop is blocked (as by a flood or a long GC), not the agent's
            await asyncio.sleep(0.3)
        reply = await pool.get_agent("idle").run("who?")
        assert reply.content == str(before)
        assert slot.restarts == 0


def test_sigkill_of_a_queued_agent_keeps_its_queue(systems: Systems) -> None:
    """Runs waiting in the slot are not lost when the process dies: they go to the replacement."""
    system = systems.start(
        """
        shutdown_timeout: 1
        agents:
          whoami: {callback: cb:pid, max_queue: 100}
        """
    )
    before = agent(system, "whoami")["pid"]
    os.kill(before, signal.SIGKILL)
    sends = [system.cli("send", "whoami", f"{n}") for n in range(3)]
    assert all(done.returncode == 0 for done in sends), [done.stderr for done in sends]
    assert {done.stdout.strip() for done in sends} == {str(agent(system, "whoami")["pid"])}


async def test_concurrent_runs_overlap_inside_the_agent(tmp_path: Path) -> None:
    """`concurrency: 4`: four 1 s runs sent together overlap in the agent process (needs the agent process's
    concurrent serving), seen from the times the callback recorded."""
    config = pool_config(tmp_path, {"adm": CALLBACKS}, "worker: {callback: 'adm:timed', concurrency: 4}\n")
    async with AgentPool(config) as pool:
        worker = pool.get_agent("worker")
        replies = await asyncio.gather(*(worker.run(f"run {n}") for n in range(4)))
        spans = [tuple(map(float, reply.content.split())) for reply in replies]
        # Every run started before any run ended: all four were in the process at once.
        assert max(began for began, _ in spans) < min(ended for _, ended in spans)
