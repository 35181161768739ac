"""Runs inside the agent process, through the Python API and real agent processes: `concurrency`, the
conversation history of concurrent runs, `run_timeout`, sync user code on worker threads (callbacks in the
agent, filters and transforms in the supervisor), and the RunContext given to callbacks and tools."""

from __future__ import annotations

import asyncio
import itertools
import json
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from llmling import AgentPool, AgentRunError
from llmling.testing import Reply, ScriptedLLM, ToolCall

RUNS = """
import asyncio
import dataclasses
import json
import os
import threading
import time
from pathlib import Path

from llmling import RunContext

HERE = Path(__file__).parent


def stamp(prompt, started):
    return json.dumps(
        {"prompt": prompt, "start": started, "end": time.time(), "pid": os.getpid(),
         "thread": threading.current_thread().name}
    )


async def timed(prompt):
    # "<seconds>:<name>": sleep that long (async) and report when
    seconds, _, _ = prompt.partition(":")
    started = time.time()
    await asyncio.sleep(float(seconds))
    return stamp(prompt, started)


def sync_timed(prompt):
    started = time.time()
    time.sleep(0.5)  # a sync callback: runs on a worker thread, never on the agent's loop
    return stamp(prompt, started)


async def maybe_hang(prompt):
    if prompt != "hang":
        return f"ok {prompt}"
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        (HERE / "cancelled.txt").write_text("cancelled")
        raise


def sync_slow(prompt):
    time.sleep(1.5)  # longer than the run_timeout; a thread cannot be interrupted
    (HERE / "thread-done.txt").write_text(str(time.time()))
    return "too late"


def context(prompt, run: RunContext):
    return json.dumps(dataclasses.asdict(run))


async def async_context(prompt, *, run: "RunContext | None" = None):
    return json.dumps(dataclasses.asdict(run))


def upper(prompt):
    return prompt.upper()


def lookup(key: str, run: RunContext) -> str:
    \"\"\"Look a key up.

    Args:
        key: what to look up
    \"\"\"
    return json.dumps({"key": key, "thread": threading.current_thread().name, **dataclasses.asdict(run)})
"""


def write(tmp_path: Path, config: str) -> Path:
    (tmp_path / "runs.py").write_text(RUNS)
    path = tmp_path / "agents.yml"
    path.write_text(textwrap.dedent(config))
    return path


def stamps(replies: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(reply.content) for reply in replies]


# -- concurrency ------------------------------------------------------------------------------------------------
async def test_concurrency_four_runs_overlap_in_one_process(tmp_path: Path) -> None:
    config = write(tmp_path, "agents:\n  worker: {callback: 'runs:timed', concurrency: 4}\n")
    async with AgentPool(config) as pool:
        worker = pool.get_agent("worker")
        runs = stamps(await asyncio.gather(*(worker.run(f"1.0:{n}") for n in range(4))))
    assert len({run["pid"] for run in runs}) == 1  # one agent process served all four
    # every run started before any of them ended: the four were in flight at once
    assert max(run["start"] for run in runs) < min(run["end"] for run in runs), runs


async def test_concurrency_one_serves_runs_one_at_a_time_in_order(tmp_path: Path) -> None:
    config = write(tmp_path, "agents:\n  worker: {callback: 'runs:timed'}\n")
    async with AgentPool(config) as pool:
        worker = pool.get_agent("worker")
        prompts = [f"0.2:{n}" for n in range(4)]
        runs = stamps(await asyncio.gather(*(worker.run(prompt) for prompt in prompts)))
    by_start = sorted(runs, key=lambda run: run["start"])
    assert [run["prompt"] for run in by_start] == prompts  # in the order they were sent
    for earlier, later in itertools.pairwise(by_start):
        assert later["start"] >= earlier["end"], runs  # never two at once


async def test_concurrent_runs_see_the_history_as_of_their_start_and_join_it_in_completion_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLT_KEY", "sk-test")

    slow_started = asyncio.Event()

    def reply(body: dict[str, Any]) -> Reply:
        prompt = body["messages"][-1]["content"]
        if prompt == "slow":
            slow_started.set()  # the server runs on this loop
        return Reply(f"re {prompt}", delay=1.5 if prompt == "slow" else 0.0)

    async with ScriptedLLM(reply) as llm:
        agent = {"model": "openai/history-model", "api_base": llm.url, "api_key_env": "LLT_KEY", "concurrency": 2}
        async with AgentPool({"agents": {"chat": agent}}) as pool:
            chat = pool.get_agent("chat")
            slow = asyncio.create_task(chat.run("slow"))
            await slow_started.wait()  # the slow run has started: its context is fixed
            assert (await chat.run("fast")).content == "re fast"  # finishes while "slow" is in flight
            assert (await slow).content == "re slow"
            await chat.run("after")
    contexts = {body["messages"][-1]["content"]: [m["content"] for m in body["messages"]] for body in llm.requests}
    assert contexts["slow"] == ["slow"]
    assert contexts["fast"] == ["fast"]  # "slow" had not completed when "fast" started
    # pairs in completion order: "fast" completed first
    assert contexts["after"] == ["fast", "re fast", "slow", "re slow", "after"]


# -- run timeouts -----------------------------------------------------------------------------------------------
async def test_run_timeout_cancels_the_run_and_the_agent_keeps_serving(tmp_path: Path) -> None:
    config = write(tmp_path, "agents:\n  worker: {callback: 'runs:maybe_hang', run_timeout: 0.5}\n")
    async with AgentPool(config) as pool:
        worker = pool.get_agent("worker")
        slot = pool.supervisor.slots["worker"]
        pid = slot.pid
        with pytest.raises(AgentRunError, match=r"run timed out after 0\.5 s"):
            await worker.run("hang")
        assert (tmp_path / "cancelled.txt").read_text() == "cancelled"  # the callback saw the cancellation
        assert (await worker.run("next")).content == "ok next"
        assert (slot.pid, slot.restarts) == (pid, 0)  # the same process serves on


async def test_a_timed_out_sync_callback_is_answered_when_its_thread_has_ended(tmp_path: Path) -> None:
    config = write(tmp_path, "agents:\n  worker: {callback: 'runs:sync_slow', run_timeout: 0.3}\n")
    async with AgentPool(config) as pool:
        with pytest.raises(AgentRunError, match=r"run timed out after 0\.3 s"):
            await pool.get_agent("worker").run("x")
        # the run counts as stopped only once its code has: the thread had finished when the error came
        assert (tmp_path / "thread-done.txt").exists()


# -- sync code never blocks a loop -------------------------------------------------------------------------------
async def test_a_sync_callback_backlog_never_starves_the_heartbeat(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        """
        heartbeat_interval: 0.2
        heartbeat_timeout: 1.0
        agents:
          worker: {callback: 'runs:sync_timed', concurrency: 10}
        """,
    )
    async with AgentPool(config) as pool:
        slot = pool.supervisor.slots["worker"]
        pid = slot.pid
        worker = pool.get_agent("worker")
        results = await asyncio.gather(*(worker.run(str(n)) for n in range(200)), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        assert not failures, failures[:3]
        runs = stamps(results)  # type: ignore[arg-type]
        assert sorted(int(run["prompt"]) for run in runs) == list(range(200))  # 200 of 200 finished
        assert {run["pid"] for run in runs} == {pid}
        assert all(run["thread"].startswith("llmling-run") for run in runs)  # never on the loop's thread
        assert (slot.pid, slot.restarts, slot.state) == (pid, 0, "ready")  # 0 heartbeat kills


async def test_sync_filters_and_transforms_run_off_the_supervisors_loop(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        """
        agents:
          source: {callback: 'runs:upper'}
          target: {callback: 'runs:upper'}
        """,
    )
    threads: dict[str, str] = {}

    def keep(text: str) -> bool:
        threads["filter"] = threading.current_thread().name
        return True

    def rewrite(text: str) -> str:
        threads["transform"] = threading.current_thread().name
        return f"rewritten {text}"

    async def stop(text: str) -> bool:
        threads["stop_condition"] = threading.current_thread().name
        return False

    async with AgentPool(config) as pool:
        source, target = pool.get_agent("source"), pool.get_agent("target")
        source.connect_to(target, filter=keep, transform=rewrite, stop_condition=stop)
        result = await source.run("hi", wait_for_connections=True)
    assert [m.content for m in result.downstream] == ["REWRITTEN HI"]
    main = threading.current_thread().name  # the pool's supervisor runs on this (the test's) loop
    assert threads["filter"] != main and threads["transform"] != main  # sync: on worker threads
    assert threads["stop_condition"] == main  # async: awaited on the loop


# -- the run context -----------------------------------------------------------------------------------------
async def test_callbacks_get_the_run_context(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        """
        agents:
          first: {callback: 'runs:context', connections: [second]}
          second: {callback: 'runs:async_context'}
        """,
    )
    async with AgentPool(config) as pool:
        result = await pool.get_agent("first").run("hi", wait_for_connections=True)
    root = json.loads(result.content)
    assert root == {
        "id": result.id,
        "attempt": 1,
        "trace_id": result.trace_id,
        "parent_id": None,
        "agent": "first",
        "hops": 0,
    }
    (forwarded,) = result.downstream
    child = json.loads(forwarded.content)
    assert child == {
        "id": forwarded.id,
        "attempt": 1,
        "trace_id": result.trace_id,
        "parent_id": result.id,
        "agent": "second",
        "hops": 1,
    }


async def test_tools_get_the_run_context_which_the_model_never_sees(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLT_KEY", "sk-test")
    (tmp_path / "runs.py").write_text(RUNS)
    async with ScriptedLLM() as llm:
        llm.script(Reply(tool_calls=(ToolCall("lookup", {"key": "k1"}),)), Reply("looked up"))
        agent = {
            "model": "openai/tool-model",
            "api_base": llm.url,
            "api_key_env": "LLT_KEY",
            "tools": ["runs:lookup"],
        }
        async with AgentPool({"agents": {"tooled": agent}, "source": str(tmp_path / "agents.yml")}) as pool:
            result = await pool.get_agent("tooled").run("find k1")
    assert result.content == "looked up"
    first, second = llm.requests
    (spec,) = first["tools"]
    assert spec["function"]["parameters"]["properties"] == {
        "key": {"type": "string", "description": "what to look up", "title": "Key"}
    }
    assert spec["function"]["parameters"]["required"] == ["key"]
    (tool_message,) = [m for m in second["messages"] if m["role"] == "tool"]
    seen = json.loads(tool_message["content"])
    assert seen["key"] == "k1"
    assert (seen["id"], seen["attempt"], seen["trace_id"], seen["agent"]) == (
        result.id,
        1,
        result.trace_id,
        "tooled",
    )
    assert seen["thread"].startswith("llmling-run")  # a sync tool runs on a worker thread
