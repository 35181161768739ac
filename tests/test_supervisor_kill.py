"""Functional: SIGKILL of the supervisor leaves no agent, forkserver or resource tracker behind."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from llmling.testing import llmling_command, wait_gone
from tests.conftest import Systems

CONFIG = """\
agents:
  one:
    callback: cb:echo
  two:
    callback: cb:upper
  slow:
    callback: cb:slow
    env_passthrough: [SLOW_SECONDS]
"""


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "run-in-flight"])
def test_no_process_outlives_a_killed_supervisor(systems: Systems, busy: bool) -> None:
    system = systems.start(CONFIG, env={"SLOW_SECONDS": "60"})
    agents = [agent["pid"] for agent in system.status()["agents"]]
    sender = None
    if busy:
        sender = subprocess.Popen(
            [*llmling_command(), "send", "slow", "x", "--socket", str(system.socket)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 20
        while system.request({"t": "status"})["pending_runs"] < 1:
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.02)
    processes = system.processes()
    commands = [cmdline(pid) for pid in processes]
    # What must die with it: the agents, the forkserver and the resource tracker.
    assert set(agents) <= set(processes)
    assert any("forkserver" in command for command in commands), commands
    assert any("resource_tracker" in command for command in commands), commands
    assert system.process is not None
    system.process.send_signal(signal.SIGKILL)
    assert system.process.wait(10) == -signal.SIGKILL
    assert wait_gone(system.tag, 10) == [], [cmdline(pid) for pid in system.processes()]
    if sender is not None:
        _, err = sender.communicate(timeout=20)
        assert sender.returncode == 1
        assert len(err.splitlines()) == 1, err
