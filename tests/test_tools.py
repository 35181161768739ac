"""Functional: local Python tools through litellm's tool calling, against the scripted OpenAI-compatible server.

One system and one scripted server serve the module; each agent has its own model name, so the scripts and
conversations of different tests never meet.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest

from llmling.agent_proc.tools import ToolBox, local_tool
from llmling.ipc.client import Client
from llmling.testing import Reply, ScriptedLLM, SystemProcess, ToolCall
from tests.conftest import Systems

API_KEY = "sk-test-tools"

TOOLS = '''
import json
import os
from pathlib import Path

LOG = Path(__file__).with_name("tool_calls.log")


def _log(**entry):
    with LOG.open("a") as file:
        file.write(json.dumps({**entry, "pid": os.getpid()}) + "\\n")


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: the first addend
        b: the second addend
    """
    _log(tool="add", a=a, b=b)
    return a + b


async def shout(text: str) -> str:
    """Upper-case a text."""
    _log(tool="shout", text=text)
    return text.upper()


def fail(reason: str = "no reason") -> str:
    """Always raises."""
    _log(tool="fail", reason=reason)
    raise ValueError(f"cannot comply: {reason}")
'''

CONFIG = """\
agents:
  calc:
    model: openai/calc-model
    api_base: {url}
    api_key_env: LLT_API_KEY
    system_prompt: Use your tools.
    tools: [tools_mod:add, tools_mod:shout, tools_mod:fail]
  bounded:
    model: openai/bounded-model
    api_base: {url}
    api_key_env: LLT_API_KEY
    tools: [tools_mod:add]
    max_tool_rounds: 2
  streamer:
    model: openai/stream-tools-model
    api_base: {url}
    api_key_env: LLT_API_KEY
    tools: [tools_mod:add, tools_mod:shout]
  broken:
    model: openai/broken-model
    api_base: {url}
    api_key_env: LLT_API_KEY
    tools: [tools_mod:add, tools_mod:does_not_exist]
"""


@pytest.fixture(scope="module")
def system(module_systems: Systems, llm: ScriptedLLM, tmp_path_factory: pytest.TempPathFactory) -> SystemProcess:
    state = tmp_path_factory.mktemp("state")
    return module_systems.start(
        CONFIG.format(url=llm.url),
        modules={"tools_mod": TOOLS},
        env={"LLT_API_KEY": API_KEY, "XDG_STATE_HOME": str(state)},
        until=lambda status: (
            {agent["name"]: agent["state"] for agent in status["agents"]}
            == {"calc": "ready", "bounded": "ready", "streamer": "ready", "broken": "failed"}
        ),
    )


def bodies_for(llm: ScriptedLLM, model: str, since: int = 0) -> list[dict[str, Any]]:
    return [body for body in llm.requests[since:] if body.get("model") == model]


def tool_log(system: SystemProcess) -> list[dict[str, Any]]:
    log = system.config.parent / "tool_calls.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def status_pid(system: SystemProcess, agent: str) -> int:
    return next(entry["pid"] for entry in system.status()["agents"] if entry["name"] == agent)


def send(system: SystemProcess, agent: str, prompt: str) -> dict[str, Any]:
    done = system.cli("send", agent, prompt, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# -- the schema ----------------------------------------------------------------------------------------------
def test_a_tool_schema_comes_from_the_signature_and_the_docstring() -> None:
    def forecast(city: str, days: int = 3, unit: Literal["c", "f"] = "c") -> str:
        """Forecast the weather of a city.

        Longer explanation that is not part of the description.

        Args:
            city: the city's name
            days: how many days ahead
        """
        return f"{city} {days} {unit}"

    spec = local_tool(forecast).spec()
    function = spec["function"]
    assert spec["type"] == "function"
    assert function["name"] == "forecast"
    assert function["description"] == "Forecast the weather of a city."
    parameters = function["parameters"]
    assert parameters["type"] == "object"
    assert parameters["required"] == ["city"]
    assert parameters["properties"]["city"]["type"] == "string"
    assert parameters["properties"]["city"]["description"] == "the city's name"
    assert parameters["properties"]["days"] == {
        "default": 3,
        "description": "how many days ahead",
        "title": "Days",
        "type": "integer",
    }
    assert parameters["properties"]["unit"]["enum"] == ["c", "f"]


async def test_the_toolbox_turns_every_failure_into_a_tool_error() -> None:
    async def divide(a: float, b: float) -> float:
        """Divide a by b."""
        return a / b

    box = ToolBox()
    box.add(local_tool(divide))
    assert await box.call("divide", '{"a": 1, "b": 4}') == ("0.25", False)
    text, failed = await box.call("divide", '{"a": 1, "b": 0}')
    assert failed and text == "Error: ZeroDivisionError: float division by zero"
    text, failed = await box.call("divide", '{"a": "one"}')
    assert failed and text.startswith("Error: invalid arguments for divide: a: ")
    assert "b: Field required" in text
    text, failed = await box.call("divide", "{not json")
    assert failed and text.startswith("Error: JSONDecodeError")
    text, failed = await box.call("multiply", "{}")
    assert failed and text == "Error: there is no tool named 'multiply'; the tools are: divide"


# -- through the system --------------------------------------------------------------------------------------
def test_a_tool_call_round(system: SystemProcess, llm: ScriptedLLM) -> None:
    since = len(llm.received)
    llm.script(
        Reply(tool_calls=(ToolCall("add", {"a": 2, "b": 40}, id="call_add"),)),
        "2 + 40 = 42.",
        model="calc-model",
    )
    out = send(system, "calc", "What is 2 + 40?")
    assert out["content"] == "2 + 40 = 42."
    # The tool ran in the agent's process.
    assert {"tool": "add", "a": 2, "b": 40, "pid": status_pid(system, "calc")} in tool_log(system)
    first, second = bodies_for(llm, "calc-model", since)
    offered = {tool["function"]["name"]: tool for tool in first["tools"]}
    assert set(offered) == {"add", "shout", "fail"}
    assert offered["add"]["function"]["description"] == "Add two integers."
    assert offered["add"]["function"]["parameters"]["properties"]["a"]["description"] == "the first addend"
    assert first["messages"][-1] == {"role": "user", "content": "What is 2 + 40?"}
    # The next request carries the model's call and the tool's result.
    assistant, result = second["messages"][-2:]
    assert assistant["role"] == "assistant"
    assert assistant["tool_calls"][0]["id"] == "call_add"
    assert assistant["tool_calls"][0]["function"]["name"] == "add"
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"a": 2, "b": 40}
    assert result["role"] == "tool"
    assert result["tool_call_id"] == "call_add"
    assert result["content"] == "42"


def test_calls_of_one_round_all_run_and_all_reach_the_model(system: SystemProcess, llm: ScriptedLLM) -> None:
    since = len(llm.received)
    llm.script(
        Reply(
            tool_calls=(ToolCall("shout", {"text": "hello"}, id="c1"), ToolCall("add", {"a": 1, "b": 1}, id="c2"))
        ),
        "HELLO and 2.",
        model="calc-model",
    )
    out = send(system, "calc", "Shout hello and add 1 and 1.")
    assert out["content"] == "HELLO and 2."
    assert out_usage_tool_calls(system, out) == 2
    second = bodies_for(llm, "calc-model", since)[1]
    results = {m["tool_call_id"]: m["content"] for m in second["messages"] if m["role"] == "tool"}
    assert results == {"c1": "HELLO", "c2": "2"}


def out_usage_tool_calls(system: SystemProcess, out: dict[str, Any]) -> int:
    """The `usage.tool_calls` of a run, read back from the history (the `send --json` output has no usage)."""
    history = json.loads(system.cli("history", out["agent"], "--json", "--limit", "1").stdout)
    (run,) = history["runs"]
    assert run["id"] == out["id"]
    return run["usage"]["tool_calls"]


def test_a_failing_tool_is_reported_to_the_model_and_the_agent_keeps_serving(
    system: SystemProcess, llm: ScriptedLLM
) -> None:
    since = len(llm.received)
    llm.script(
        Reply(tool_calls=(ToolCall("fail", {"reason": "the moon is full"}, id="call_fail"),)),
        "The tool failed, sorry.",
        model="calc-model",
    )
    out = send(system, "calc", "Please do the impossible.")
    assert out["content"] == "The tool failed, sorry."
    result = bodies_for(llm, "calc-model", since)[1]["messages"][-1]
    assert result == {
        "role": "tool",
        "tool_call_id": "call_fail",
        "name": "fail",
        "content": "Error: ValueError: cannot comply: the moon is full",
    }
    # Unknown tools and bad arguments are tool errors too.
    llm.script(
        Reply(tool_calls=(ToolCall("teleport", {}, id="t1"), ToolCall("add", {"a": "x"}, id="t2"))),
        "Both failed.",
        model="calc-model",
    )
    since = len(llm.received)
    assert send(system, "calc", "Teleport me.")["content"] == "Both failed."
    results = {m["tool_call_id"]: m["content"] for m in bodies_for(llm, "calc-model", since)[1]["messages"][-2:]}
    assert results["t1"].startswith("Error: there is no tool named 'teleport'")
    assert results["t2"].startswith("Error: invalid arguments for add: a: Input should be a valid integer")
    # Still serving, never restarted.
    llm.script("Still here.", model="calc-model")
    assert send(system, "calc", "Are you there?")["content"] == "Still here."
    status = {agent["name"]: agent for agent in system.status()["agents"]}
    assert status["calc"]["state"] == "ready"
    assert status["calc"]["restarts"] == 0


def test_max_tool_rounds_bounds_the_loop(system: SystemProcess, llm: ScriptedLLM) -> None:
    since = len(llm.received)
    calls_before = len([e for e in tool_log(system) if e["tool"] == "add"])
    forever = Reply(tool_calls=(ToolCall("add", {"a": 1, "b": 2}),))
    llm.script(forever, forever, forever, model="bounded-model")
    done = system.cli("send", "bounded", "Loop forever.", "--json")
    assert done.returncode == 1
    assert "max_tool_rounds=2" in done.stderr
    bodies = bodies_for(llm, "bounded-model", since)
    # Two rounds of tool calls, then one last request that asks for an answer without tools.
    assert len(bodies) == 3
    assert [body.get("tool_choice") for body in bodies] == [None, None, "none"]
    assert len([e for e in tool_log(system) if e["tool"] == "add"]) == calls_before + 2
    llm.script("Done looping.", model="bounded-model")
    assert send(system, "bounded", "Now answer.")["content"] == "Done looping."


def test_tools_with_streaming(system: SystemProcess, llm: ScriptedLLM) -> None:
    since = len(llm.received)
    llm.script(
        Reply(tool_calls=(ToolCall("add", {"a": 20, "b": 22}, id="s1"),)),
        Reply("The answer is 42.", chunks=("The answer", " is", " 42.")),
        model="stream-tools-model",
    )
    with Client(system.socket, timeout=60) as client:
        frames = list(
            client.stream({"t": "send", "agent": "streamer", "prompt": "Add 20 and 22.", "stream": True})
        )
    accepted, *chunks, result = frames
    assert accepted["accepted"]["id"] == result["id"]
    assert [chunk["text"] for chunk in chunks] == ["The answer", " is", " 42."]
    assert result["t"] == "result"
    assert result["content"] == "The answer is 42."
    assert result["usage"]["tool_calls"] == 1
    first, second = bodies_for(llm, "stream-tools-model", since)
    assert first["stream"] is True and second["stream"] is True
    # The streamed tool call was put together from its deltas.
    call = second["messages"][-2]["tool_calls"][0]
    assert call["id"] == "s1"
    assert json.loads(call["function"]["arguments"]) == {"a": 20, "b": 22}
    assert second["messages"][-1]["content"] == "42"
    # The CLI prints the streamed text as it comes.
    llm.script(
        Reply(tool_calls=(ToolCall("shout", {"text": "quiet"}),)),
        Reply("QUIET it is."),
        model="stream-tools-model",
    )
    done = system.cli("send", "streamer", "Shout quiet.")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "QUIET it is.\n"


def test_a_tool_that_cannot_be_imported_fails_its_agent_only(system: SystemProcess) -> None:
    status = {agent["name"]: agent for agent in system.status()["agents"]}
    assert status["broken"]["state"] in ("failed", "restarting", "starting")
    error = status["broken"]["error"]
    assert "component 'tools' failed" in error
    assert "tools_mod:does_not_exist" in error
    assert "does_not_exist" in error
    assert all(status[name]["state"] == "ready" for name in ("calc", "bounded", "streamer"))
    assert "failed: component 'tools' failed" in system.log_text()
