"""Accepted means done: the journal, redelivery, dead letters, resume on `up`, and the exit statuses.

Real processes throughout: `llmling up`, its agents, the CLI and real HTTP. Agents are small callbacks; a run
that must be in flight when a process is killed waits for a gate file, so the tests count outcomes instead of
sleeping.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import aiohttp

from llmling.testing import SystemProcess, llmling_command, wait_gone
from tests._automation import free_port, wait_until
from tests.conftest import Systems

# Callbacks of these tests. `gated` waits until the file GATE exists beside it (so runs pile up in flight);
# `once_then` blocks its first run (writing its pid to `first.pid`) and answers every later one; `flaky` raises
# until `ok` exists; `crash` ends its process on every run.
WORK = """
import asyncio
import os
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _path(name):
    return os.path.join(HERE, name)


async def gated(prompt):
    while not os.path.exists(_path("GATE")):
        await asyncio.sleep(0.01)
    with open(_path("seen.txt"), "a") as out:
        out.write(prompt + "\\n")
    return f"done: {prompt}"


def once_then(prompt):
    first = _path("first.pid")
    if not os.path.exists(first):
        with open(first, "w") as out:
            out.write(str(os.getpid()))
        time.sleep(60)
    return f"b got: {prompt}"


def flaky(prompt):
    if not os.path.exists(_path("ok")):
        raise ValueError(f"not yet: {prompt}")
    return f"fine: {prompt}"


def crash(prompt):
    os._exit(3)
"""


def history_db(system: SystemProcess) -> Path:
    """The system's history.db in its state folder (`<name>-<hash of the config path>`)."""
    found = sorted((system.config.parent / "state" / "llmling").glob("system-*/history.db"))
    return found[0] if found else system.config.parent / "state" / "llmling" / "system" / "history.db"


def query(system: SystemProcess, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    path = history_db(system)
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute(sql, params).fetchall()
    except sqlite3.OperationalError:
        return []  # the tables are not made yet
    finally:
        db.close()


def history_ids(system: SystemProcess) -> list[str]:
    return [row[0] for row in query(system, "SELECT run_id FROM runs")]


def agent_pid(system: SystemProcess, agent: str) -> int:
    return next(a["pid"] for a in system.status()["agents"] if a["name"] == agent)


async def post_many(url: str, count: int, concurrency: int = 32) -> dict[str, str]:
    """POST `count` distinct bodies; returns {run id: body} of the deliveries answered 202."""
    accepted: dict[str, str] = {}
    queue = list(range(count))

    async def worker(http: aiohttp.ClientSession) -> None:
        while queue:
            body = f"delivery {queue.pop()}"
            async with http.post(url, data=body.encode()) as response:
                assert response.status == 202, await response.text()
                accepted[(await response.json())["id"]] = body

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    return accepted


def webhook_system(systems: Systems, port: int, extra: str = "") -> SystemProcess:
    return systems.start(
        f"""
        agents:
          hook:
            callback: work:gated
            max_queue: 5000  # every delivery of the flood is accepted (none refused with 429)
            retry: {{max_attempts: 3, backoff: 0.05}}
            triggers:
              - {{type: webhook, name: in, port: {port}, path: /in}}
        {extra}
        """,
        modules={"work": WORK},
    )


async def test_sigkill_of_an_agent_with_1000_deliveries_in_flight_loses_none(systems: Systems) -> None:
    port = free_port()
    system = webhook_system(systems, port)
    folder = system.config.parent
    accepted = await post_many(f"http://127.0.0.1:{port}/in", 1000)
    assert len(accepted) == 1000
    # Every delivery is accepted and none has run: all 1000 are in flight when the agent dies.
    assert not (folder / "seen.txt").exists()
    os.kill(agent_pid(system, "hook"), signal.SIGKILL)
    (folder / "GATE").touch()
    wait_until(lambda: len(history_ids(system)) >= 1000, timeout=60, what="1000 outcomes in history")
    rows = query(system, "SELECT run_id, prompt, content FROM runs")
    # One outcome per accepted delivery, under the id its 202 named, with its own prompt: 0 lost, 0 doubled.
    assert len(rows) == 1000
    assert {run_id: prompt for run_id, prompt, _ in rows} == accepted
    assert all(content == f"done: {prompt}" for _, prompt, content in rows)
    # Each was delivered again (its first attempt died with the process), once, to the replacement.
    assert sorted((folder / "seen.txt").read_text().splitlines()) == sorted(accepted.values())
    # Done units leave the journal in the transaction that writes their history row.
    assert query(system, "SELECT COUNT(*) FROM units") == [(0,)]


async def test_sigkill_of_up_mid_flood_then_up_again_runs_every_accepted_delivery(systems: Systems) -> None:
    port = free_port()
    system = webhook_system(systems, port)
    folder = system.config.parent
    accepted = await post_many(f"http://127.0.0.1:{port}/in", 400)
    assert len(accepted) == 400
    assert system.process is not None
    system.process.send_signal(signal.SIGKILL)
    assert system.process.wait(10) == -signal.SIGKILL
    assert wait_gone(system.tag, 10) == []
    assert history_ids(system) == []  # nothing ran before the kill
    (folder / "GATE").touch()
    system.start()
    wait_until(lambda: len(history_ids(system)) >= 400, timeout=60, what="400 outcomes after the restart")
    assert sorted(history_ids(system)) == sorted(accepted)
    assert "resuming 400 accepted runs" in system.log_text()


def test_forwarded_run_is_redelivered_when_its_agent_is_killed(systems: Systems) -> None:
    system = systems.start(
        """
        agents:
          a:
            callback: cb:echo
            connections: [b]
          b:
            callback: work:once_then
            retry: {max_attempts: 3, backoff: 0.05}
        """,
        modules={"work": WORK},
    )
    folder = system.config.parent
    sender = subprocess.Popen(
        [*llmling_command(), "send", "a", "hi", "--wait", "--json", "--socket", str(system.socket)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=system.env,
    )
    pid_file = folder / "first.pid"
    wait_until(lambda: pid_file.exists() and pid_file.read_text(), timeout=30, what="b's first attempt")
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    out, err = sender.communicate(timeout=60)
    assert sender.returncode == 0, f"{out}\n{err}\n{system.log_text()}"
    reply = json.loads(out)
    assert reply["content"] == "echo: hi"
    [downstream] = reply["downstream"]
    assert downstream["agent"] == "b" and downstream["content"] == "b got: echo: hi"
    # The redelivered run kept its id; history has it once.
    assert downstream["attempt"] == 2
    assert history_ids(system).count(downstream["id"]) == 1
    assert query(system, "SELECT COUNT(*) FROM units") == [(0,)]


def test_dead_letters_list_retry_and_purge(systems: Systems) -> None:
    system = systems.start(
        """
        agents:
          flaky:
            callback: work:flaky
        """,
        modules={"work": WORK},
    )
    folder = system.config.parent
    # An error of the agent's own code is not redelivered by default: the run goes to the dead letters.
    failed = system.cli("send", "flaky", "first", "--json")
    assert failed.returncode == 1 and "not yet: first" in failed.stderr
    listed = system.cli("dead-letters", "--json")
    assert listed.returncode == 0, listed.stderr
    [letter] = json.loads(listed.stdout)
    assert letter["agent"] == "flaky" and letter["prompt"] == "first" and letter["attempts"] == 1
    assert letter["reason"] == "error: ValueError: not yet: first" and letter["source"] == "send"
    text = system.cli("dead-letters", "flaky")
    assert letter["id"] in text.stdout and "not yet: first" in text.stdout
    # Fixed, delivered again under the same id: it lands in history and leaves the dead letters.
    (folder / "ok").touch()
    retried = system.cli("retry", letter["id"])
    assert retried.returncode == 0, retried.stderr
    assert "retrying 1 run" in retried.stdout
    wait_until(lambda: letter["id"] in history_ids(system), what="the retried run in history")
    assert query(system, "SELECT content FROM runs WHERE run_id = ?", letter["id"]) == [("fine: first",)]
    assert json.loads(system.cli("dead-letters", "--json").stdout) == []
    # `retry --all`, and `purge`.
    (folder / "ok").unlink()
    for prompt in ("second", "third"):
        assert system.cli("send", "flaky", prompt).returncode == 1
    assert len(json.loads(system.cli("dead-letters", "flaky", "--json").stdout)) == 2
    (folder / "ok").touch()
    assert "retrying 2 runs" in system.cli("retry", "--all").stdout
    wait_until(lambda: len(history_ids(system)) == 3, what="both retried runs in history")
    (folder / "ok").unlink()
    assert system.cli("send", "flaky", "fourth").returncode == 1
    purged = system.cli("dead-letters", "purge")
    assert purged.returncode == 0 and "purged 1 dead letter" in purged.stdout
    assert json.loads(system.cli("dead-letters", "--json").stdout) == []
    unknown = system.cli("retry", "nope")
    assert unknown.returncode == 1 and "no dead letter with id nope" in unknown.stderr


def test_exhausted_attempts_are_a_dead_letter_and_send_wait_exits_3(systems: Systems) -> None:
    system = systems.start(
        """
        agents:
          a:
            callback: cb:echo
            connections: [crasher]
          crasher:
            callback: work:crash
            retry: {max_attempts: 2, backoff: 0.01}
        """,
        modules={"work": WORK},
    )
    events = subprocess.Popen(
        [*llmling_command(), "watch", "--json", "--socket", str(system.socket)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=system.env,
    )
    try:
        assert events.stdout is not None
        # Attached before the run starts: its first event is `subscribed`.
        assert json.loads(events.stdout.readline())["event"] == "subscribed"
        sent = system.cli("send", "a", "x", "--wait", "--json")
        assert sent.returncode == 3, sent.stderr
        [downstream] = json.loads(sent.stdout)["downstream"]
        assert downstream["agent"] == "crasher" and "died during the run" in downstream["error"]
        [letter] = json.loads(system.cli("dead-letters", "--json").stdout)
        assert letter["id"] == downstream["id"] and letter["attempts"] == 2 and letter["source"] == "forward"
        assert letter["reason"] == "crash: agent process died during the run"
        # `watch` shows the redelivery and the dead letter.
        seen: list[dict[str, Any]] = []
        while not any(event.get("event") == "dead_letter" for event in seen):
            line = events.stdout.readline()
            assert line, "watch ended before the dead_letter event"
            seen.append(json.loads(line))
        retries = [event for event in seen if event.get("event") == "run_retry"]
        assert [event["attempt"] for event in retries] == [1] and retries[0]["kind"] == "crash"
        assert seen[-1]["id"] == letter["id"] and seen[-1]["attempts"] == 2
    finally:
        events.kill()
        events.wait(10)


def test_stop_leaves_unfinished_runs_in_the_journal_and_up_resumes_them(systems: Systems) -> None:
    system = systems.start(
        """
        shutdown_timeout: 0.3
        agents:
          slow:
            callback: cb:slow
            env_passthrough: [SLOW_SECONDS]
        """,
        env={"SLOW_SECONDS": "60"},
    )
    senders = [
        subprocess.Popen(
            [*llmling_command(), "send", "slow", f"job {index}", "--socket", str(system.socket)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=system.env,
        )
        for index in range(3)
    ]
    wait_until(lambda: system.status()["pending_runs"] >= 3, what="3 runs in flight")
    assert system.process is not None
    system.process.send_signal(signal.SIGTERM)
    # The drain could not finish them: `up` says so in its exit status, the callers are told where they are.
    assert system.process.wait(30) == 3
    assert "3 accepted runs left in the journal" in system.log_text()
    for sender in senders:
        _, err = sender.communicate(timeout=30)
        assert sender.returncode == 1 and "stays in the journal" in err
    assert wait_gone(system.tag, 10) == []
    assert len(query(system, "SELECT id FROM units WHERE state IN ('queued', 'running', 'retry')")) == 3
    assert query(system, "SELECT COUNT(*) FROM units WHERE state = 'dead'") == [(0,)]
    system.env["SLOW_SECONDS"] = "0.01"
    system.start()
    wait_until(lambda: len(history_ids(system)) == 3, timeout=30, what="the 3 runs after the restart")
    assert "resuming 3 accepted runs" in system.log_text()
    assert sorted(row[0] for row in query(system, "SELECT prompt FROM runs")) == ["job 0", "job 1", "job 2"]
    # Everything finished this time: exit 0.
    assert system.stop() == 0


def test_durability_off_keeps_no_journal(systems: Systems) -> None:
    system = systems.start(
        """
        durability: "off"
        agents:
          one:
            callback: cb:echo
        """
    )
    sent = system.cli("send", "one", "hi")
    assert sent.returncode == 0 and sent.stdout.strip() == "echo: hi"
    wait_until(lambda: len(history_ids(system)) == 1, what="the run in history")
    assert query(system, "SELECT name FROM sqlite_master WHERE name = 'units'") == []
    assert not (history_db(system).parent / "journal.lock").exists()
    listed = system.cli("dead-letters")
    assert listed.returncode == 1 and "durability: off" in listed.stderr
    assert system.stop() == 0


def test_a_journal_that_cannot_open_fails_the_start(systems: Systems) -> None:
    system = systems.make(
        """
        state_dir: blocked/state
        agents:
          one:
            callback: cb:echo
        """
    )
    (system.config.parent / "blocked").write_text("a file where the state folder should be")
    assert system.run() == 1
    log = system.log_text()
    assert "cannot open the journal" in log and "blocked/state/history.db" in log
    assert "Traceback" not in log


def test_two_systems_cannot_share_a_journal(systems: Systems, tmp_path: Path) -> None:
    state = tmp_path / "shared-state"
    config = f"""
        state_dir: {state}
        agents:
          one:
            callback: cb:echo
        """
    first = systems.start(config)
    second = systems.make(config)
    assert second.run() == 1
    assert "another running system uses it" in second.log_text()
    assert first.cli("send", "one", "still here").stdout.strip() == "echo: still here"


def test_a_run_whose_client_is_gone_still_lands_in_history(systems: Systems) -> None:
    system = systems.start(
        """
        agents:
          slow:
            callback: cb:slow
            env_passthrough: [SLOW_SECONDS]
        """,
        env={"SLOW_SECONDS": "1"},
    )
    client = subprocess.Popen(
        [*llmling_command(), "send", "slow", "orphan", "--socket", str(system.socket)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=system.env,
    )
    wait_until(lambda: system.status()["pending_runs"] >= 1, what="the run in flight")
    client.kill()
    client.wait(10)
    wait_until(lambda: query(system, "SELECT prompt, content FROM runs"), what="the run in history")
    assert query(system, "SELECT prompt, content FROM runs") == [("orphan", "late")]


def test_a_run_for_an_agent_that_cannot_take_it_is_a_dead_letter(systems: Systems) -> None:
    def settled(status: dict[str, Any]) -> bool:
        states = {agent["name"]: agent["state"] for agent in status["agents"]}
        return states == {"a": "ready", "broken": "failed"}

    system = systems.start(
        """
        agents:
          a:
            callback: cb:echo
            connections: [broken]
          broken:
            callback: cb:no_such_function
        """,
        until=settled,
    )
    sent = system.cli("send", "a", "x", "--wait", "--json")
    assert sent.returncode == 3, sent.stderr
    [downstream] = json.loads(sent.stdout)["downstream"]
    [letter] = json.loads(system.cli("dead-letters", "broken", "--json").stdout)
    assert letter["id"] == downstream["id"] and letter["source"] == "forward" and letter["prompt"] == "echo: x"
    assert letter["reason"].startswith("unavailable: agent failed to start")
