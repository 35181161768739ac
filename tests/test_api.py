"""The Python API against real agent processes: the async guide's snippets as written, and the semantics of
connections, waiting, errors and parallel start-up."""

from __future__ import annotations

import asyncio
import textwrap
import time
from pathlib import Path

import pytest

from llmling import Agent, AgentPool, AgentRunError, ChatMessage, StartupError, UnknownAgentError
from llmling.testing import Reply, ScriptedLLM

# Callbacks that leave a trace of every call in calls.log beside them, so a test can see downstream runs.
TRACED = """
import asyncio
import os
from pathlib import Path

LOG = Path(__file__).with_name("calls.log")


def record(agent, prompt):
    with LOG.open("a") as log:
        log.write(f"{agent}\\t{prompt}\\n")


async def analyze(prompt):
    record("analyzer", prompt)
    return f"analysis of {prompt}"


async def summarize(prompt):
    await asyncio.sleep(float(os.environ.get("SUMMARY_SECONDS", "0")))
    record("summarizer", prompt)
    return f"summary of {prompt}"


async def slow_summarize(prompt):
    await asyncio.sleep(0.6)
    record("summarizer", prompt)
    return f"summary of {prompt}"


def shout(prompt):
    record("shout", prompt)
    return prompt.upper()


def ping(prompt):
    record("ping", prompt)
    return prompt + "."


def fail(prompt):
    raise RuntimeError(f"cannot handle {prompt!r}")


def die(prompt):
    os._exit(3)


def only_urgent(content):
    return "urgent" in content


def tag(content):
    return f"[tagged] {content}"
"""

SLOW_INIT = """
import time

time.sleep(0.6)  # a component that takes a known time to initialise


def reply(prompt):
    return prompt
"""


def write(folder: Path, config: str, **modules: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "traced.py").write_text(TRACED)
    for name, source in modules.items():
        (folder / f"{name}.py").write_text(source)
    path = folder / "agents.yml"
    path.write_text(textwrap.dedent(config))
    return path


def calls(folder: Path) -> list[tuple[str, str]]:
    log = folder / "calls.log"
    if not log.exists():
        return []
    return [tuple(line.split("\t", 1)) for line in log.read_text().splitlines()]  # type: ignore[misc]


PAIR = """
name: pair
agents:
  analyzer:
    callback: traced:analyze
  summarizer:
    callback: traced:summarize
    env_passthrough: [SUMMARY_SECONDS]
"""


@pytest.fixture
def pair(tmp_path: Path) -> Path:
    return write(tmp_path, PAIR)


# -- the guide, as written -----------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMLING_TEST_KEY", "sk-test")


async def test_guide_single_agent(capsys: pytest.CaptureFixture[str]) -> None:
    async with ScriptedLLM() as llm:
        llm.script("I can analyse and summarise.")
        # Single agent
        async with Agent(
            model="openai/test-model", api_base=llm.url, api_key_env="LLMLING_TEST_KEY", system_prompt="Be brief."
        ) as agent:
            result = await agent.run("What can you do?")
            print(result.content)
    assert capsys.readouterr().out == "I can analyse and summarise.\n"
    assert isinstance(result, ChatMessage)
    assert result.agent == "agent"
    assert result.usage.total_tokens is not None
    assert result.elapsed is not None
    assert result.elapsed > 0
    messages = llm.requests[0]["messages"]
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[-1] == {"role": "user", "content": "What can you do?"}


async def test_guide_pool_gather(pair: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(pair.parent)
    # Multiple agents in a pool
    async with AgentPool[None]("agents.yml") as pool:
        analyzer = pool.get_agent("analyzer")
        summarizer = pool.get_agent("summarizer")

        # Run agents concurrently
        results = await asyncio.gather(analyzer.run("Analyze this text"), summarizer.run("Summarize this text"))
    assert [r.content for r in results] == ["analysis of Analyze this text", "summary of Summarize this text"]
    assert [r.agent for r in results] == ["analyzer", "summarizer"]
    assert results[0].trace_id != results[1].trace_id


async def test_guide_connections_and_complete_tasks(pair: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUMMARY_SECONDS", "0.5")
    async with AgentPool(pair) as pool:
        analyzer = pool.get_agent("analyzer")
        summarizer = pool.get_agent("summarizer")
        # Messages flow automatically
        analyzer >> summarizer  # analyzer's outputs go to summarizer

        started = time.perf_counter()
        await analyzer.run("Analyze", wait_for_connections=False)
        returned = time.perf_counter() - started
        assert ("summarizer", "analysis of Analyze") not in calls(pair.parent)

        # Since we didnt wait for connected agents, we can trigger the waiting manually:
        await summarizer.complete_tasks()
        assert ("summarizer", "analysis of Analyze") in calls(pair.parent)
        assert returned < 0.5  # the reply came back before the downstream run's 0.5 s


async def test_guide_parallel_initialization(pair: Path) -> None:
    # Pool initialization (default: True)
    pool = AgentPool(pair, parallel_load=True)  # agents initialize concurrently
    async with pool:
        assert sorted(pool.agents) == ["analyzer", "summarizer"]
    single = write(pair.parent / "single", "agents:\n  solo:\n    callback: traced:shout\n")
    # Agent initialization (default: True)
    agent = Agent(single, parallel_init=True)  # components initialize concurrently
    async with agent:
        assert (await agent.run("hi")).content == "HI"


# -- wait_for_connections and the message tree --------------------------------------------------------------
async def test_wait_for_connections_waits_for_the_whole_tree(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        """
        agents:
          analyzer: {callback: traced:analyze, connections: [summarizer, shouter]}
          summarizer: {callback: traced:slow_summarize, connections: [shouter]}
          shouter: {callback: traced:shout}
        """,
    )
    async with AgentPool(config) as pool:
        result = await pool.get_agent("analyzer").run("x", wait_for_connections=True)
    downstream = {(m.agent, m.content) for m in result.downstream}
    assert downstream == {
        ("summarizer", "summary of analysis of x"),
        ("shouter", "ANALYSIS OF X"),
        ("shouter", "SUMMARY OF ANALYSIS OF X"),
    }
    by_agent = {m.agent + m.content: m for m in result.downstream}
    summary = by_agent["summarizersummary of analysis of x"]
    assert summary.parent_id == result.id
    assert by_agent["shouterSUMMARY OF ANALYSIS OF X"].parent_id == summary.id
    assert all(m.trace_id == result.trace_id for m in result.downstream)


async def test_default_comes_from_the_connection_and_explicit_argument_wins(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        """
        agents:
          analyzer:
            callback: traced:analyze
            connections: [{name: summarizer, wait_for_completion: true}]
          summarizer: {callback: traced:slow_summarize}
        """,
    )
    async with AgentPool(config) as pool:
        analyzer = pool.get_agent("analyzer")
        waited = await analyzer.run("a")  # default from the connection: wait
        assert [m.content for m in waited.downstream] == ["summary of analysis of a"]
        not_waited = await analyzer.run("b", wait_for_connections=False)
        assert not_waited.downstream == ()
        assert ("summarizer", "analysis of b") not in calls(tmp_path)
        await pool.get_agent("summarizer").complete_tasks()
        assert ("summarizer", "analysis of b") in calls(tmp_path)


# -- >> on handles, lists, chains; disconnect -----------------------------------------------------------------
async def test_fan_out_chain_and_disconnect(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        """
        agents:
          analyzer: {callback: traced:analyze}
          summarizer: {callback: traced:summarize}
          shouter: {callback: traced:shout}
        """,
    )
    async with AgentPool(config) as pool:
        analyzer, summarizer, shouter = (pool.get_agent(n) for n in ("analyzer", "summarizer", "shouter"))
        fan = analyzer >> [summarizer, shouter]
        result = await analyzer.run("one", wait_for_connections=True)
        assert {m.agent for m in result.downstream} == {"summarizer", "shouter"}

        fan.disconnect()
        assert not fan.active
        result = await analyzer.run("two", wait_for_connections=True)
        assert result.downstream == ()

        chain = analyzer >> summarizer >> shouter
        result = await analyzer.run("three", wait_for_connections=True)
        assert [(m.agent, m.content) for m in result.downstream] == [
            ("summarizer", "summary of analysis of three"),
            ("shouter", "SUMMARY OF ANALYSIS OF THREE"),
        ]
        assert [(r.source, r.target) for r in chain.routes] == [
            ("analyzer", "summarizer"),
            ("summarizer", "shouter"),
        ]
        chain.disconnect()  # removes every link the chain made
        assert not chain.active
        assert analyzer.connections == [] and summarizer.connections == []
        result = await analyzer.run("four", wait_for_connections=True)
        assert result.downstream == ()


async def test_yaml_mapping_form_filter_transform_stop(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        """
        agents:
          analyzer:
            callback: traced:analyze
            connections:
              - name: summarizer
                filter: traced:only_urgent
                transform: traced:tag
              - name: shouter
                filter: {type: word_match, words: [Alert]}
                stop_condition: {type: word_match, words: [stop]}
          summarizer: {callback: traced:summarize}
          shouter: {callback: traced:shout}
        """,
    )
    async with AgentPool(config) as pool:
        analyzer = pool.get_agent("analyzer")
        quiet = await analyzer.run("routine", wait_for_connections=True)
        assert quiet.downstream == ()
        urgent = await analyzer.run("urgent alert", wait_for_connections=True)
        assert {(m.agent, m.content) for m in urgent.downstream} == {
            ("summarizer", "summary of [tagged] analysis of urgent alert"),
            ("shouter", "ANALYSIS OF URGENT ALERT"),  # the transform belongs to the other connection
        }
        stopped = await analyzer.run("alert: stop now", wait_for_connections=True)
        assert stopped.downstream == ()
        after = await analyzer.run("alert again", wait_for_connections=True)
        assert after.downstream == ()  # the shouter connection ended with the stop condition


async def test_python_connection_with_callables_behaves_like_yaml(pair: Path) -> None:
    async with AgentPool(pair) as pool:
        analyzer, summarizer = pool.get_agent("analyzer"), pool.get_agent("summarizer")
        analyzer.connect_to(summarizer, filter=lambda text: "keep" in text, transform=str.upper)
        dropped = await analyzer.run("drop", wait_for_connections=True)
        kept = await analyzer.run("keep", wait_for_connections=True)
    assert dropped.downstream == ()
    assert [m.content for m in kept.downstream] == ["summary of ANALYSIS OF KEEP"]


async def test_cycles_end_at_max_hops(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        """
        max_hops: 4
        agents:
          ping: {callback: traced:ping, connections: [pong]}
          pong: {callback: traced:ping, connections: [ping]}
        """,
    )
    async with AgentPool(config) as pool:
        result = await asyncio.wait_for(pool.get_agent("ping").run("x", wait_for_connections=True), 20)
    assert [m.content for m in result.downstream] == ["x..", "x...", "x....", "x....."]
    assert len(calls(tmp_path)) == 5  # hops 0..4


# -- errors --------------------------------------------------------------------------------------------------
async def test_run_error_names_the_agent_and_cause(tmp_path: Path) -> None:
    config = write(tmp_path, "agents:\n  broken: {callback: traced:fail}\n  dying: {callback: traced:die}\n")
    async with AgentPool(config) as pool:
        with pytest.raises(AgentRunError) as error:
            await pool.get_agent("broken").run("this")
        assert error.value.agent == "broken"
        assert "cannot handle 'this'" in error.value.cause
        with pytest.raises(AgentRunError) as crash:
            await asyncio.wait_for(pool.get_agent("dying").run("now"), 10)
        assert crash.value.agent == "dying"
        assert "died" in crash.value.cause
        with pytest.raises(UnknownAgentError):
            pool.get_agent("nobody")


async def test_a_failing_agent_fails_the_pool_start(tmp_path: Path) -> None:
    config = write(tmp_path, "agents:\n  good: {callback: traced:shout}\n  bad: {callback: missing_module:f}\n")
    with pytest.raises(StartupError, match=r"bad.*missing_module"):
        async with AgentPool(config):
            pass


def _gone(pid: int | None) -> bool:
    assert pid is not None
    status = Path(f"/proc/{pid}/status")
    return not status.exists() or "zombie" in status.read_text()


async def test_pool_stops_on_exception_and_leaves_no_process(pair: Path) -> None:
    pids: list[int | None] = []

    async def failing_user_code() -> None:
        async with AgentPool(pair) as pool:
            pids.extend(slot.pid for slot in pool.supervisor.slots.values())
            raise KeyError("user code failed")

    with pytest.raises(KeyError):
        await failing_user_code()
    assert len(pids) == 2
    assert all(_gone(pid) for pid in pids)


async def test_pool_stops_on_cancellation(pair: Path) -> None:
    holder: list[AgentPool[None]] = []
    entered = asyncio.Event()

    async def use() -> None:
        async with AgentPool[None](pair) as pool:
            holder.append(pool)
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(use())
    await entered.wait()
    socket = holder[0].supervisor.socket_path
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not socket.exists()


# -- parallel start-up really is parallel ---------------------------------------------------------------------
async def test_parallel_load_false_serialises(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        "agents:\n" + "".join(f"  a{i}: {{callback: slow_init:reply}}\n" for i in range(3)),
        slow_init=SLOW_INIT,
    )
    timings = {}
    for parallel in (True, False):
        started = time.perf_counter()
        async with AgentPool(config, parallel_load=parallel):
            timings[parallel] = time.perf_counter() - started
    # Three agents that each take 0.6 s to initialise: about 0.6 s together, about 1.8 s one by one.
    assert timings[True] < 1.4, timings
    assert timings[False] >= 1.8, timings
    assert timings[False] - timings[True] > 0.6, timings


async def test_streamed_and_usage_through_litellm() -> None:
    async with ScriptedLLM() as llm:
        llm.script(Reply("first answer"), Reply("second answer"))
        async with Agent(model="openai/test-model", api_base=llm.url, api_key_env="LLMLING_TEST_KEY") as agent:
            first = await agent.run("one")
            second = await agent.run("two")
    assert (first.content, second.content) == ("first answer", "second answer")
    # the conversation lives in the agent's process: the second request carries the first exchange
    assert [m["content"] for m in llm.requests[1]["messages"]] == ["one", "first answer", "two"]
    assert second.usage.prompt_tokens is not None


async def test_agent_parallel_init_false_serialises_its_components(tmp_path: Path) -> None:
    from tests.test_knowledge import DocServer

    timings = {}
    async with ScriptedLLM() as llm, DocServer(delay=0.5) as docs:
        # Warm the forkserver (its litellm preload is paid once per process), so only the init is timed.
        async with Agent(model="openai/test-model", api_base=llm.url, api_key_env="LLMLING_TEST_KEY"):
            pass
        for parallel in (True, False):
            agent = Agent(
                model="openai/test-model",
                api_base=llm.url,
                api_key_env="LLMLING_TEST_KEY",
                knowledge={"urls": [f"{docs.url}/doc/{name}" for name in ("a", "b", "c")]},
                parallel_init=parallel,
            )
            started = time.perf_counter()
            async with agent:
                timings[parallel] = time.perf_counter() - started
                assert (await agent.run("hi")).content == "echo: hi"
    # Three sources of 0.5 s each: about 0.5 s together, about 1.5 s one after another.
    assert timings[True] < 1.3, timings
    assert timings[False] >= 1.5, timings
