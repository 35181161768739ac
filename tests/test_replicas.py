"""`replicas: N` without NATS: N local processes of one agent, runs spread over them, admission across them,
a SIGKILLed replica's runs redelivered under their ids, status and logs per process, reload and restart.

Real agent processes throughout; the tests wait on counts and files, never on sleeps.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import socket
import sqlite3
import textwrap
from pathlib import Path
from typing import Any

import pytest

from llmling import AgentPool
from llmling.config import load_config
from llmling.errors import AgentBusyError, AgentRunError
from llmling.supervisor.replicas import AgentReplicas
from tests._automation import wait_until
from tests._slots import cancel_all, pool_config, until
from tests.conftest import Systems

# `served` answers with the pid of the process that ran it; `gated` waits until the file GATE exists beside it,
# then answers "<pid> <prompt>"; `hold` keeps its place for a minute; `shout` prints a line (its process's log).
REP = """
import asyncio
import os

HERE = os.path.dirname(os.path.abspath(__file__))


async def served(prompt):
    await asyncio.sleep(0.005)
    return str(os.getpid())


async def gated(prompt):
    while not os.path.exists(os.path.join(HERE, "GATE")):
        await asyncio.sleep(0.01)
    return f"{os.getpid()} {prompt}"


async def hold(prompt):
    await asyncio.sleep(60)
    return "late"


def shout(prompt):
    print(f"shout {prompt}", flush=True)
    return str(os.getpid())
"""


def replicas_of(pool: AgentPool[Any], agent: str) -> AgentReplicas:
    runner = pool.supervisor.slots[agent]
    assert isinstance(runner, AgentReplicas)
    return runner


async def every_replica_ready(pool: AgentPool[Any], agent: str) -> AgentReplicas:
    """`agent`'s replicas, once each of its processes is READY."""
    runner = replicas_of(pool, agent)
    await until(lambda: all(slot.state == "ready" for slot in runner.replicas))
    return runner


def all_processes_ready(status: dict[str, Any]) -> bool:
    return status.get("state") == "ready" and all(
        process["state"] == "ready" for agent in status["agents"] for process in agent["processes"]
    )


async def test_three_replicas_share_300_runs(tmp_path: Path) -> None:
    config = pool_config(tmp_path, {"rep": REP}, "spread: {callback: 'rep:served', replicas: 3, concurrency: 4}\n")
    async with AgentPool(config) as pool:
        runner = await every_replica_ready(pool, "spread")
        pids = {process["pid"] for process in runner.status()["processes"]}
        assert len(pids) == 3
        spread = pool.get_agent("spread")
        replies = await asyncio.gather(*(spread.run(f"run {n}") for n in range(300)))
        served = collections.Counter(int(reply.content) for reply in replies)
        assert sum(served.values()) == 300
        # Every process served some; none other did.
        assert set(served) == pids, served
        assert runner.status()["running"] == runner.status()["queued"] == 0


async def test_sigkill_of_a_replica_with_500_runs_accepted_loses_none(tmp_path: Path) -> None:
    config = pool_config(
        tmp_path,
        {"rep": REP},
        """
        gate:
          callback: rep:gated
          replicas: 3
          concurrency: 4
          max_queue: 1000
          retry: {max_attempts: 3, backoff: 0.05}
        """,
    )
    events: list[dict[str, Any]] = []
    async with AgentPool(config) as pool:
        pool.supervisor.add_listener(events.append)
        runner, router = await every_replica_ready(pool, "gate"), pool.supervisor.router
        ids = [f"run-{n:03d}" for n in range(500)]
        sends = [asyncio.create_task(router.send("gate", run_id, run_id=run_id)) for run_id in ids]
        # All 500 accepted: 12 running (4 in each process), 488 waiting for a place.
        await until(lambda: runner.running == 12 and runner.queued == 488)
        victim = runner.replicas[1]
        killed = victim.pid
        assert killed is not None
        in_victim = victim.running
        assert in_victim == 4
        os.kill(killed, signal.SIGKILL)
        await until(lambda: len([e for e in events if e.get("event") == "run_retry"]) == in_victim)
        (tmp_path / "GATE").touch()
        outcomes = await asyncio.gather(*sends)
    results = [result for result, _ in outcomes]
    # One outcome per accepted run, under its own id, with its own prompt: 0 lost, 0 doubled.
    assert sorted(result["id"] for result in results) == ids
    assert all(result["content"].split(" ", 1)[1] == result["id"] for result in results)
    # The runs in flight in the killed process were redelivered once, under the same id, to a live process.
    retried = {event["id"] for event in events if event.get("event") == "run_retry"}
    assert all(event["kind"] == "crash" for event in events if event.get("event") == "run_retry")
    again = {result["id"]: result for result in results if result["attempt"] == 2}
    assert set(again) == retried and len(retried) == in_victim
    assert all(int(result["content"].split()[0]) != killed for result in again.values())
    assert max(result["attempt"] for result in results) == 2
    finished = [event["id"] for event in events if event.get("event") == "run_finished"]
    assert sorted(finished) == ids
    # History holds one row per run, and the journal no unit: each finished exactly once.
    db = sqlite3.connect(pool.config.state_path / "history.db")
    try:
        assert sorted(row[0] for row in db.execute("SELECT run_id FROM runs")) == ids
        assert db.execute("SELECT COUNT(*) FROM units").fetchone() == (0,)
    finally:
        db.close()


async def test_a_dead_replicas_run_goes_to_another_replica_under_its_id(tmp_path: Path) -> None:
    # The killed replica gives up at once (max_restarts 0): its run can only be redelivered to the other one.
    config = pool_config(
        tmp_path,
        {"rep": REP},
        """
        gate:
          callback: rep:gated
          replicas: 2
          concurrency: 2
          restart: {max_restarts: 0}
          retry: {max_attempts: 3, backoff: 0.05}
        """,
    )
    events: list[dict[str, Any]] = []
    async with AgentPool(config) as pool:
        pool.supervisor.add_listener(events.append)
        runner, router = await every_replica_ready(pool, "gate"), pool.supervisor.router
        sends = [asyncio.create_task(router.send("gate", run_id, run_id=run_id)) for run_id in ("one", "two")]
        # The least loaded replica takes each run: one in each process.
        await until(lambda: [slot.running for slot in runner.replicas] == [1, 1])
        survivor, victim = runner.replicas
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        await until(lambda: victim.gave_up and survivor.running == 2)
        # The agent is still ready (one process is); status says which one failed.
        status = runner.status()
        assert status["state"] == "ready"
        assert [process["state"] for process in status["processes"]] == ["ready", "failed"]
        assert "gate#2: gave up" in str(status["error"])
        (tmp_path / "GATE").touch()
        results = [result for result, _ in await asyncio.gather(*sends)]
        assert {result["id"]: result["attempt"] for result in results} == {"one": 1, "two": 2}
        assert all(result["content"] == f"{survivor.pid} {result['id']}" for result in results)
        retries = [event for event in events if event.get("event") == "run_retry"]
        assert [(event["id"], event["kind"]) for event in retries] == [("two", "crash")]

        # With every replica given up the agent takes no run; `restart` brings them all back.
        assert survivor.pid is not None
        os.kill(survivor.pid, signal.SIGKILL)
        await until(lambda: survivor.gave_up)
        assert runner.state == "failed"
        with pytest.raises(AgentRunError) as caught:
            await router.send("gate", "nobody")
        assert caught.value.kind == "unavailable"
        await runner.restart(5.0)
        assert runner.state == "ready" and all(slot.takes_runs for slot in runner.replicas)
        result, _ = await router.send("gate", "back")
        assert result["content"].endswith(" back")


async def test_max_queue_counts_waiting_runs_across_replicas(tmp_path: Path) -> None:
    config = pool_config(
        tmp_path,
        {"rep": REP},
        "slow: {callback: 'rep:hold', replicas: 2, concurrency: 1, max_queue: 2}\n",
        shutdown_timeout=0,
    )
    async with AgentPool(config) as pool:
        runner = await every_replica_ready(pool, "slow")
        assert runner.free_places == 2
        slow = pool.get_agent("slow")
        runs = [asyncio.create_task(slow.run(f"run {n}")) for n in range(4)]
        # One run in each process, two waiting: the agent's queue (max_queue 2) is full.
        await until(lambda: runner.running == 2 and runner.queued == 2)
        assert [process["running"] for process in runner.status()["processes"]] == [1, 1]
        assert runner.free_places == 0
        with pytest.raises(AgentBusyError) as caught:
            await slow.run("one more")
        assert str(caught.value) == "agent slow is busy (2 queued)"
        assert (runner.running, runner.queued) == (2, 2)
        await cancel_all(runs)


async def test_reload_adds_and_removes_replicas_and_keeps_the_others(tmp_path: Path) -> None:
    agent = "spread: {{callback: 'rep:served', replicas: {}}}\n"
    path = pool_config(tmp_path, {"rep": REP}, agent.format(1))
    async with AgentPool(path) as pool:
        supervisor = pool.supervisor
        runner = replicas_of(pool, "spread")
        first = runner.pid
        path.write_text(path.read_text().replace("replicas: 1", "replicas: 3"))
        plan = await supervisor.reloader.reload(load_config(path))
        assert (plan.changed, plan.resized, plan.summary()) == ((), ("spread",), "replicas of spread")
        assert len(runner.replicas) == 3 and all(slot.state == "ready" for slot in runner.replicas)
        assert runner.pid == first  # the first process kept running; two were added
        assert [slot.label for slot in runner.replicas] == ["spread#1", "spread#2", "spread#3"]
        replies = await asyncio.gather(*(pool.get_agent("spread").run(str(n)) for n in range(60)))
        assert len({reply.content for reply in replies}) == 3
        path.write_text(path.read_text().replace("replicas: 3", "replicas: 2"))
        await supervisor.reloader.reload(load_config(path))
        assert len(runner.replicas) == 2 and runner.pid == first
        assert runner.status()["replicas"] == 2
        # A changed setting besides the count restarts every process.
        path.write_text(path.read_text().replace("replicas: 2", "replicas: 2, concurrency: 2"))
        before = {slot.pid for slot in runner.replicas}
        plan = await supervisor.reloader.reload(load_config(path))
        assert (plan.changed, plan.resized) == (("spread",), ())
        after = {slot.pid for slot in runner.replicas}
        assert len(after) == 2 and not after & before


def test_status_logs_and_restart_name_every_process(systems: Systems) -> None:
    system = systems.start(
        textwrap.dedent(
            """
            agents:
              loud: {callback: 'rep:shout', replicas: 3}
              lone: {callback: 'rep:shout'}
            """
        ),
        modules={"rep": REP},
        until=all_processes_ready,
    )
    status = {agent["name"]: agent for agent in system.status()["agents"]}
    loud, lone = status["loud"], status["lone"]
    host = socket.gethostname()
    assert (loud["replicas"], loud["placement"], lone["replicas"], lone["placement"]) == (3, "local", 1, "local")
    assert [process["host"] for process in loud["processes"]] == [host] * 3
    pids = [process["pid"] for process in loud["processes"]]
    assert len(set(pids)) == 3 and loud["pid"] == pids[0]
    assert {"host", "pid", "state", "restarts", "running", "queued", "error"} <= set(loud["processes"][0])
    assert lone["processes"] == [
        {
            "host": host,
            "pid": lone["pid"],
            "state": "ready",
            "restarts": 0,
            "running": 0,
            "queued": 0,
            "error": None,
        }
    ]

    shown = system.cli("status")
    assert shown.returncode == 0, shown.stderr
    for number, pid in enumerate(pids, 1):
        assert any(
            line.split()[:3] == [f"loud#{number}", str(pid), "ready"] and line.split()[-1] == host
            for line in shown.stdout.splitlines()
        ), shown.stdout
    assert any(line.split()[0] == "lone" and line.split()[-1] == host for line in shown.stdout.splitlines())

    # Enough runs that every process prints; each line names the process it came from.
    for n in range(30):
        sent = system.cli("send", "loud", f"n{n}")
        assert sent.returncode == 0, sent.stderr

    def shouts() -> dict[int, list[str]]:
        lines = system.cli("logs", "loud", "--json", "-n", "1000").stdout.splitlines()
        by_replica: dict[int, list[str]] = collections.defaultdict(list)
        for entry in map(json.loads, lines):
            if entry["text"].startswith("shout "):
                by_replica[entry["replica"]].append(entry["text"])
        return by_replica

    wait_until(lambda: sum(map(len, shouts().values())) == 30, timeout=30, what="30 shouts in the logs")
    assert set(shouts()) <= {1, 2, 3} and len(shouts()) >= 2
    text = system.cli("logs", "loud", "-n", "1000").stdout
    assert any(f"loud#{number}" in text for number in (1, 2, 3))

    restarted = system.cli("restart", "loud")
    assert restarted.returncode == 0, restarted.stderr
    after = {agent["name"]: agent for agent in system.status()["agents"]}["loud"]
    fresh = [process["pid"] for process in after["processes"]]
    assert len(fresh) == 3 and not set(fresh) & set(pids)
    assert all(process["state"] == "ready" for process in after["processes"])
