"""The supervisor pings each agent's own event loop; a loop blocked past the timeout gets its process replaced."""

from __future__ import annotations

import time

from tests.conftest import Systems

BLOCKING = """
import time


async def block(prompt):
    time.sleep(60)  # an async callback that blocks the agent's event loop: it cannot answer pings
    return "never"
"""


def test_a_blocked_agent_loop_is_detected_and_replaced(systems: Systems) -> None:
    system = systems.start(
        """
        heartbeat_interval: 0.2
        heartbeat_timeout: 1.0
        agents:
          stuck: {callback: "blocking:block"}
          fine: {callback: "cb:echo"}
        """,
        modules={"blocking": BLOCKING},
    )
    before = {agent["name"]: agent for agent in system.status()["agents"]}
    started = time.monotonic()
    result = system.cli("send", "stuck", "hello", timeout=30)
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert "died" in result.stderr
    assert elapsed < 15  # detected by the heartbeat, not by the 60 s sleep ending
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        after = {agent["name"]: agent for agent in system.status()["agents"]}
        if after["stuck"]["state"] == "ready" and after["stuck"]["pid"] != before["stuck"]["pid"]:
            break
        time.sleep(0.1)
    assert after["stuck"]["restarts"] >= 1
    assert after["stuck"]["pid"] != before["stuck"]["pid"]
    assert after["fine"]["pid"] == before["fine"]["pid"]  # the other agent was not touched
    assert system.cli("send", "fine", "still here").stdout.strip() == "echo: still here"


HANGING = """
import time

time.sleep(600)  # an init that never ends


def reply(prompt):
    return prompt
"""


def test_an_agent_that_never_gets_ready_is_ended_and_reported(systems: Systems) -> None:
    system = systems.start(
        """
        start_timeout: 1.0
        agents:
          hung: {callback: "hanging:reply"}
          fine: {callback: "cb:echo"}
        """,
        modules={"hanging": HANGING},
        until=lambda status: any(agent["state"] == "failed" for agent in status["agents"]),
    )
    agents = {agent["name"]: agent for agent in system.status()["agents"]}
    assert agents["hung"]["state"] == "failed"
    assert "start_timeout" in agents["hung"]["error"]
    assert agents["fine"]["state"] == "ready"
    failed = system.cli("send", "hung", "hi")
    assert failed.returncode == 1
    assert "start_timeout" in failed.stderr
