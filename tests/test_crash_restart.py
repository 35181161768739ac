"""Functional: an agent process that dies is restarted; a run in flight when it dies fails at once when it is
not redelivered (`retry: {max_attempts: 1}`; redelivery is tested in test_delivery.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

from llmling.testing import SystemProcess, llmling_command
from tests.conftest import Systems

CONFIG = """\
agents:
  whoami:
    callback: cb:pid
  slow:
    callback: cb:slow
    env_passthrough: [SLOW_SECONDS]
    retry: {max_attempts: 1}  # not redelivered: its run fails when its process dies
  echo:
    callback: cb:echo
"""


def agent(system: SystemProcess, name: str) -> dict[str, Any]:
    return next(item for item in system.status()["agents"] if item["name"] == name)


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.02)


def test_a_killed_agent_is_restarted_and_serves_again(systems: Systems) -> None:
    system = systems.start(CONFIG)
    before = agent(system, "whoami")
    assert system.cli("send", "whoami", "?").stdout.strip() == str(before["pid"])
    os.kill(before["pid"], signal.SIGKILL)

    def back() -> bool:
        now = agent(system, "whoami")
        return now["restarts"] >= 1 and now["state"] == "ready" and now["pid"] != before["pid"]

    wait_for(back)
    after = agent(system, "whoami")
    done = system.cli("send", "whoami", "?")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(after["pid"])
    assert after["pid"] in system.processes()
    # The other agents were not touched.
    assert agent(system, "echo")["restarts"] == 0
    assert "signal SIGKILL" in system.log_text()


def test_a_run_in_flight_fails_when_its_agent_dies(systems: Systems) -> None:
    system = systems.start(CONFIG, env={"SLOW_SECONDS": "60"})
    victim = agent(system, "slow")["pid"]
    sender = subprocess.Popen(
        [*llmling_command(), "send", "slow", "take your time", "--socket", str(system.socket)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # In the process (its frame written to it), not only accepted: a kill before that would leave the run
        # for the restarted process.
        wait_for(lambda: (agent(system, "slow").get("running") or 0) >= 1)
        os.kill(victim, signal.SIGKILL)
        # Far less than the 60 s the callback sleeps: the run fails when the process dies, it does not hang.
        out, err = sender.communicate(timeout=20)
    finally:
        sender.kill()
        sender.wait()
    assert sender.returncode == 1
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "died" in lines[0]
    assert "'slow'" in lines[0]
    wait_for(lambda: agent(system, "slow")["state"] == "ready" and agent(system, "slow")["restarts"] >= 1)
    assert system.cli("send", "echo", "fine").stdout == "echo: fine\n"


def test_runs_sent_while_the_agent_restarts_wait_for_it(systems: Systems) -> None:
    system = systems.start(CONFIG)
    old = agent(system, "whoami")["pid"]
    os.kill(old, signal.SIGKILL)
    # Sent right away: it either reaches the restarted process or waits for its READY.
    done = system.cli("send", "whoami", "?")
    if done.returncode != 0:
        # The send raced the death notice: the run was in flight on the dying process.
        assert "died" in done.stderr
        wait_for(lambda: agent(system, "whoami")["state"] == "ready")
        done = system.cli("send", "whoami", "?")
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) != old
    assert int(done.stdout) == agent(system, "whoami")["pid"]
