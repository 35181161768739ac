"""Background runs: the supervisor's timer repeats a prompt (control requests, CLI, YAML, Python API)."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from pathlib import Path

import pytest

from llmling import AgentPool
from llmling.config import load_config
from tests._automation import RECORDER, got, wait_until, write_system

ONE_AGENT = """
agents:
  monitor:
    callback: rec:{callback}
    env_passthrough: [REC_SLOW]
"""


def prompts(folder: Path) -> list[str]:
    return [call["prompt"] for call in got(folder)]


def test_control_requests_start_list_stop(systems) -> None:  # type: ignore[no-untyped-def]
    system = systems.start(ONE_AGENT.format(callback="record"), modules={"rec": RECORDER})
    folder = system.config.parent
    start = {"t": "background_start", "agent": "monitor", "prompt": "Monitor this", "interval": 0.2}
    reply = system.request(start)
    assert reply["t"] == "ok" and reply["replaced"] is False
    assert reply["job"]["interval"] == 0.2 and reply["job"]["max_count"] is None
    wait_until(lambda: prompts(folder).count("Monitor this") >= 3, what="3 background runs")

    jobs = system.request({"t": "background_list"})["jobs"]
    assert [job["agent"] for job in jobs] == ["monitor"] and jobs[0]["runs"] >= 3

    stopped = system.request({"t": "background_stop", "agent": "monitor"})
    assert stopped["t"] == "ok" and stopped["stopped"] is True and stopped["job"]["runs"] >= 3
    time.sleep(0.3)  # a run in flight may still land
    count = len(got(folder))
    time.sleep(0.6)
    assert len(got(folder)) == count, "runs went on after background_stop"
    assert system.request({"t": "background_list"})["jobs"] == []
    again = system.request({"t": "background_stop", "agent": "monitor"})
    assert again["t"] == "ok" and again["stopped"] is False

    for bad, message in [
        ({"agent": "monitor", "prompt": "x", "interval": 0}, "interval must be a positive"),
        ({"agent": "monitor", "prompt": "x", "interval": "1"}, "field 'interval'"),
        ({"agent": "monitor", "prompt": "x", "interval": 1, "max_count": 0}, "max_count must be at least 1"),
        ({"agent": "nobody", "prompt": "x", "interval": 1}, "unknown agent 'nobody'"),
        ({"agent": "monitor", "interval": 1}, "field 'prompt'"),
    ]:
        reply = system.request({"t": "background_start", **bad})
        assert reply["t"] == "error" and message in reply["error"], reply


def test_cli_start_with_max_count_and_stop(systems) -> None:  # type: ignore[no-untyped-def]
    system = systems.start(ONE_AGENT.format(callback="record"), modules={"rec": RECORDER})
    folder = system.config.parent
    result = system.cli("background", "start", "monitor", "three times", "--interval", "0.2", "--max-count", "3")
    assert result.returncode == 0, result.stderr
    assert "monitor: background runs every 0.2 s, 3 runs at most" in result.stdout
    wait_until(lambda: len(got(folder)) >= 3, what="3 runs")
    time.sleep(0.7)
    assert prompts(folder) == ["three times"] * 3, "max_count was not respected"
    listed = system.cli("background", "list")
    assert listed.returncode == 0 and "no background runs" in listed.stdout

    result = system.cli("background", "start", "monitor", "forever", "--interval", "0.2")
    assert result.returncode == 0, result.stderr
    wait_until(lambda: "forever" in prompts(folder), what="a run")
    listed = system.cli("background", "list")
    assert "monitor" in listed.stdout and "forever" in listed.stdout
    replaced = system.cli("background", "start", "monitor", "other", "--interval", "5")
    assert "(replaced the previous one)" in replaced.stdout
    stopped = system.cli("background", "stop", "monitor")
    assert stopped.returncode == 0 and "background runs stopped" in stopped.stdout
    unknown = system.cli("background", "stop", "nobody")
    assert unknown.returncode != 0 and "unknown agent" in unknown.stderr


def test_slow_runs_do_not_pile_up(systems) -> None:  # type: ignore[no-untyped-def]
    system = systems.start(ONE_AGENT.format(callback="slow"), modules={"rec": RECORDER}, env={"REC_SLOW": "0.7"})
    folder = system.config.parent
    system.request({"t": "background_start", "agent": "monitor", "prompt": "slow", "interval": 0.2})
    wait_until(lambda: len(got(folder)) >= 3, timeout=30, what="3 slow runs")
    job = system.request({"t": "background_list"})["jobs"][0]
    system.request({"t": "background_stop", "agent": "monitor"})
    calls = got(folder)
    for earlier, later in itertools.pairwise(calls):
        assert later["start"] >= earlier["end"] - 0.01, "two background runs overlapped"
    assert job["skipped"] >= 3, job
    assert system.status()["pending_runs"] <= 1


def test_yaml_background_and_agent_restart_keeps_schedule(systems) -> None:  # type: ignore[no-untyped-def]
    system = systems.start(
        """
        agents:
          monitor:
            callback: rec:record
            background: {prompt: "from yaml", interval: 0.25}
        """,
        modules={"rec": RECORDER},
    )
    folder = system.config.parent
    wait_until(lambda: len(got(folder)) >= 2, what="runs from the YAML background")
    pid = system.status()["agents"][0]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: (agent := system.status()["agents"][0])["state"] == "ready" and agent["pid"] != pid,
        what="the restarted agent",
    )
    count = len(got(folder))
    wait_until(lambda: len(got(folder)) >= count + 2, what="runs after the restart")
    jobs = system.request({"t": "background_list"})["jobs"]
    assert jobs and jobs[0]["prompt"] == "from yaml"


async def test_python_api_run_in_background_and_stop(tmp_path: Path, sock_path: Path) -> None:
    path = write_system(tmp_path / "sys", ONE_AGENT.format(callback="record"))
    async with AgentPool(load_config(path), socket=sock_path) as pool:
        agent = pool.get_agent("monitor")
        await agent.run_in_background("Monitor this", interval=0.2)
        for _ in range(200):
            if len(got(path.parent)) >= 3:
                break
            await asyncio.sleep(0.05)
        await agent.stop()
        assert len(got(path.parent)) >= 3
        await asyncio.sleep(0.3)
        count = len(got(path.parent))
        await asyncio.sleep(0.5)
        assert len(got(path.parent)) == count
        await agent.stop()  # stopping twice is fine

        await agent.run_in_background("twice", interval=0.1, max_count=2)
        await asyncio.sleep(0.6)
        assert prompts(path.parent).count("twice") == 2
        with pytest.raises(ValueError, match="interval"):
            await agent.run_in_background("x", interval=0)
