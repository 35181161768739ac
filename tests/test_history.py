"""Functional: the run history (SQLite, written by the supervisor), usage and cost in results, `llmling history`,
the totals of `llmling status`, and agents that resume their conversation after a restart.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from llmling.ipc.client import Client
from llmling.testing import ScriptedLLM, SystemProcess
from tests.conftest import Systems

API_KEY = "sk-test-history"
# gpt-4o-mini is in litellm's bundled cost map: $0.15 per million prompt tokens, $0.60 per million completion.
PROMPT_PRICE, COMPLETION_PRICE = 0.15e-6, 0.60e-6

CONFIG = """\
state_dir: state
agents:
  priced:
    model: openai/gpt-4o-mini
    api_base: {url}
    api_key_env: LLT_API_KEY
  unpriced:
    model: openai/unmapped-test-model
    api_base: {url}
    api_key_env: LLT_API_KEY
  memory:
    model: openai/memory-model
    api_base: {url}
    api_key_env: LLT_API_KEY
    system_prompt: Remember.
    history: {{max_messages: 4}}
  forever:
    model: openai/forever-model
    api_base: {url}
    api_key_env: LLT_API_KEY
    history: {{resume: always}}
  scripted:
    callback: cb:echo
"""


@pytest.fixture(scope="module")
def system(module_systems: Systems, llm: ScriptedLLM) -> SystemProcess:
    return module_systems.start(CONFIG.format(url=llm.url), env={"LLT_API_KEY": API_KEY})


def db_rows(system: SystemProcess, agent: str, at_least: int = 0) -> list[sqlite3.Row]:
    """The agent's rows, read directly from the file; waits (briefly) for `at_least` of them, since the
    supervisor writes them from its writer task just after the reply has gone out."""
    deadline = time.monotonic() + 5
    while True:
        with sqlite3.connect(system.config.parent / "state" / "history.db") as db:
            db.row_factory = sqlite3.Row
            rows = db.execute("SELECT * FROM runs WHERE agent = ? ORDER BY seq", (agent,)).fetchall()
        if len(rows) >= at_least or time.monotonic() > deadline:
            return rows
        time.sleep(0.02)


def send(system: SystemProcess, agent: str, prompt: str) -> dict[str, Any]:
    reply = system.request({"t": "send", "agent": agent, "prompt": prompt}, timeout=60)
    assert reply["t"] == "result", reply
    return reply


def bodies_for(llm: ScriptedLLM, model: str, since: int = 0) -> list[dict[str, Any]]:
    return [body for body in llm.requests[since:] if body.get("model") == model]


def agent_status(system: SystemProcess, agent: str) -> dict[str, Any]:
    return next(entry for entry in system.status()["agents"] if entry["name"] == agent)


def test_runs_are_recorded_with_usage_and_cost(system: SystemProcess, llm: ScriptedLLM) -> None:
    llm.script("Priced answer.", model="gpt-4o-mini")
    llm.script("Unpriced answer.", model="unmapped-test-model")
    priced = send(system, "priced", "How much does this cost?")
    unpriced = send(system, "unpriced", "And this one?")
    usage = priced["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] == 2
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    expected = usage["prompt_tokens"] * PROMPT_PRICE + usage["completion_tokens"] * COMPLETION_PRICE
    assert usage["cost"] == pytest.approx(expected)
    assert unpriced["usage"]["cost"] is None
    assert unpriced["usage"]["total_tokens"] > 0

    (row,) = db_rows(system, "priced", 1)
    assert row["prompt"] == "How much does this cost?"
    assert row["content"] == "Priced answer."
    assert row["run_id"] == priced["id"] and row["trace_id"] == priced["trace_id"]
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
        usage["total_tokens"],
    )
    assert row["cost"] == pytest.approx(expected)
    assert abs(row["finished_at"] - time.time()) < 60
    (row,) = db_rows(system, "unpriced", 1)
    assert row["cost"] is None
    assert row["content"] == "Unpriced answer."
    # A callback agent's runs are recorded too, without usage.
    send(system, "scripted", "hello callback")
    (row,) = db_rows(system, "scripted", 1)
    assert (row["content"], row["total_tokens"], row["cost"]) == ("echo: hello callback", None, None)


def test_llmling_history_plain_and_json(system: SystemProcess, llm: ScriptedLLM) -> None:
    llm.script("First reply.", "Second reply,\nover two lines.", model="gpt-4o-mini")
    first = send(system, "priced", "history one")
    second = send(system, "priced", "history two")
    done = system.cli("history", "priced", "--json", "--limit", "2")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["agent"] == "priced"
    assert out["path"] == str(system.config.parent / "state" / "history.db")
    assert [run["prompt"] for run in out["runs"]] == ["history one", "history two"]
    assert [run["id"] for run in out["runs"]] == [first["id"], second["id"]]
    assert out["runs"][1]["content"] == "Second reply,\nover two lines."
    assert out["runs"][1]["usage"]["cost"] == pytest.approx(second["usage"]["cost"])
    rows = db_rows(system, "priced")
    totals = out["totals"]
    assert totals["runs"] == len(rows)
    assert totals["total_tokens"] == sum(row["total_tokens"] for row in rows)
    assert totals["cost"] == pytest.approx(sum(row["cost"] for row in rows))

    done = system.cli("history", "priced", "--limit", "2")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1:3] == ["  > history one", "  < First reply."]
    assert lines[4:7] == ["  > history two", "  < Second reply,", "    over two lines."]
    assert f"tokens {second['usage']['total_tokens']}" in lines[3]
    assert f"cost ${second['usage']['cost']:.6f}" in lines[3]
    assert lines[-1].startswith(f"priced: {len(rows)} runs, {totals['total_tokens']} tokens")

    unknown = system.cli("history", "nobody")
    assert unknown.returncode == 1
    assert "unknown agent 'nobody'" in unknown.stderr
    assert "no runs recorded for unpriced" not in system.cli("history", "unpriced").stdout


def test_status_shows_runs_tokens_and_cost_per_agent(system: SystemProcess, llm: ScriptedLLM) -> None:
    llm.script("Counted.", model="unmapped-test-model")
    send(system, "unpriced", "count me")
    raw = system.status()["totals"]
    for agent in ("priced", "unpriced", "scripted"):
        rows = db_rows(system, agent, raw[agent]["runs"])
        assert raw[agent]["runs"] == len(rows)
        assert raw[agent]["total_tokens"] == sum(row["total_tokens"] or 0 for row in rows)
    assert raw["priced"]["cost"] == pytest.approx(sum(row["cost"] for row in db_rows(system, "priced")))
    assert raw["unpriced"]["cost"] is None
    done = system.cli("status", "--json")
    assert json.loads(done.stdout)["totals"] == raw
    done = system.cli("status")
    lines = {line.split()[0]: line.split() for line in done.stdout.splitlines()[2:]}
    assert done.stdout.splitlines()[1].split()[-3:] == ["RUNS", "TOKENS", "COST"]
    assert lines["priced"][-3:-1] == [str(raw["priced"]["runs"]), str(raw["priced"]["total_tokens"])]
    assert lines["priced"][-1] == f"${raw['priced']['cost']:.6f}"
    assert lines["unpriced"][-3:] == [str(raw["unpriced"]["runs"]), str(raw["unpriced"]["total_tokens"]), "-"]


def test_a_restarted_agent_resumes_its_conversation(system: SystemProcess, llm: ScriptedLLM) -> None:
    llm.script("Hello Ada.", "Noted: blue.", "Your name is Ada and you like blue.", model="memory-model")
    send(system, "memory", "My name is Ada.")
    send(system, "memory", "I like blue.")
    old_pid = agent_status(system, "memory")["pid"]
    since = len(llm.received)
    os.kill(old_pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = agent_status(system, "memory")
        if status["state"] == "ready" and status["pid"] != old_pid:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"memory did not come back: {agent_status(system, 'memory')}")
    assert status["restarts"] == 1
    assert send(system, "memory", "What do you know about me?")["content"] == "Your name is Ada and you like blue."
    (body,) = bodies_for(llm, "memory-model", since)
    assert body["messages"] == [
        {"role": "system", "content": "Remember."},
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": "I like blue."},
        {"role": "assistant", "content": "Noted: blue."},
        {"role": "user", "content": "What do you know about me?"},
    ]
    # max_messages: 4 bounds the context, also in the process that keeps running.
    llm.script("Still Ada.", model="memory-model")
    since = len(llm.received)
    send(system, "memory", "Again?")
    (body,) = bodies_for(llm, "memory-model", since)
    assert [m["content"] for m in body["messages"]] == [
        "Remember.",
        "I like blue.",
        "Noted: blue.",
        "What do you know about me?",
        "Your name is Ada and you like blue.",
        "Again?",
    ]


def test_history_outlives_the_system_and_resume_always_crosses_sessions(
    systems: Systems, llm: ScriptedLLM, tmp_path: Path
) -> None:
    config = CONFIG.format(url=llm.url).replace("state_dir: state", f"state_dir: {tmp_path / 'shared-state'}")
    first = systems.start(config, env={"LLT_API_KEY": API_KEY})
    llm.script("I will remember 7.", model="forever-model")
    llm.script("Seven, noted.", model="memory-model")
    send(first, "forever", "Remember the number 7.")
    send(first, "memory", "Remember the number 7.")
    assert first.stop() == 0

    second = systems.start(config, env={"LLT_API_KEY": API_KEY})
    since = len(llm.received)
    llm.script("It was 7.", model="forever-model")
    llm.script("I do not know.", model="memory-model")
    send(second, "forever", "Which number?")
    send(second, "memory", "Which number?")
    (forever,) = bodies_for(llm, "forever-model", since)
    assert forever["messages"] == [
        {"role": "user", "content": "Remember the number 7."},
        {"role": "assistant", "content": "I will remember 7."},
        {"role": "user", "content": "Which number?"},
    ]
    # `resume: restart` (the default) starts each `up` fresh.
    (memory,) = bodies_for(llm, "memory-model", since)
    assert memory["messages"] == [
        {"role": "system", "content": "Remember."},
        {"role": "user", "content": "Which number?"},
    ]
    # The history keeps both sessions; status counts this one only.
    out = json.loads(second.cli("history", "memory", "--json").stdout)
    assert [run["prompt"] for run in out["runs"]] == ["Remember the number 7.", "Which number?"]
    assert len({run["session"] for run in out["runs"]}) == 2
    assert second.status()["totals"]["memory"]["runs"] == 1


def test_the_history_request_checks_its_fields(system: SystemProcess) -> None:
    with Client(system.socket, timeout=10) as client:
        assert client.request({"t": "history"})["error"] == "field 'agent' must be of type str"
        bad_limit = client.request({"t": "history", "agent": "priced", "limit": "ten"})
        assert bad_limit["error"] == "field 'limit' must be of type int"
        too_many = client.request({"t": "history", "agent": "priced", "limit": 5000})
        assert too_many["error"] == "field 'limit' must be between 0 and 1000"
