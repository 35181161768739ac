"""Functional: MCP servers (tests/mcp_demo_server.py, written with the official SDK's MCPServer) used by an
agent: their tools offered next to local ones and called through the session, a resource read as knowledge,
a dead server reported and reconnected, Streamable HTTP with headers, and server processes that end with the
system.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmling.testing import Reply, ScriptedLLM, SystemProcess, ToolCall
from tests.conftest import Systems

API_KEY = "sk-test-mcp"
SERVER_SOURCE = (Path(__file__).parent / "mcp_demo_server.py").read_text()
FACTS = "The launch code word is PAPAYA. The office plant is called Gustav."

LOCAL_TOOLS = '''
def lookup(key: str) -> str:
    """Look a key up in the local table."""
    return f"local value of {key}"
'''

CONFIG = """\
agents:
  helper:
    model: openai/mcp-model
    api_base: {url}
    api_key_env: LLT_API_KEY
    system_prompt: You can use tools.
    tools: [local_tools:lookup]
    mcp_servers:
      - python mcp_demo.py
    knowledge:
      resources: [notes://facts]
"""


@pytest.fixture(scope="module")
def system(module_systems: Systems, llm: ScriptedLLM, tmp_path_factory: pytest.TempPathFactory) -> SystemProcess:
    state = tmp_path_factory.mktemp("state")
    return module_systems.start(
        CONFIG.format(url=llm.url),
        modules={"mcp_demo": SERVER_SOURCE, "local_tools": LOCAL_TOOLS},
        env={"LLT_API_KEY": API_KEY, "XDG_STATE_HOME": str(state)},
    )


def bodies_for(llm: ScriptedLLM, model: str, since: int = 0) -> list[dict[str, Any]]:
    return [body for body in llm.requests[since:] if body.get("model") == model]


def send(system: SystemProcess, agent: str, prompt: str) -> dict[str, Any]:
    done = system.cli("send", agent, prompt, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def tool_results(body: dict[str, Any]) -> dict[str, str]:
    return {m["tool_call_id"]: m["content"] for m in body["messages"] if m["role"] == "tool"}


def call_tools(
    llm: ScriptedLLM, system: SystemProcess, model: str, agent: str, *calls: ToolCall
) -> dict[str, str]:
    """Have the scripted model call `calls` in one round; return the tool results it got, by call id."""
    since = len(llm.received)
    llm.script(Reply(tool_calls=calls), "done", model=model)
    assert send(system, agent, "use your tools")["content"] == "done"
    return tool_results(bodies_for(llm, model, since)[-1])


def test_mcp_tools_are_offered_next_to_local_tools(system: SystemProcess, llm: ScriptedLLM) -> None:
    since = len(llm.received)
    llm.script("ok", model="mcp-model")
    send(system, "helper", "Which tools do you have?")
    (body,) = bodies_for(llm, "mcp-model", since)
    tools = {tool["function"]["name"]: tool["function"] for tool in body["tools"]}
    # The server's `lookup` clashes with the local one: it gets the server's name as a prefix.
    assert set(tools) == {"lookup", "multiply", "mcp_demo_lookup", "explode", "server_pid"}
    assert tools["lookup"]["description"] == "Look a key up in the local table."
    assert tools["mcp_demo_lookup"]["description"] == "Look a key up in the demo server's table."
    assert tools["multiply"]["parameters"]["properties"]["a"]["type"] == "integer"
    assert tools["multiply"]["parameters"]["required"] == ["a", "b"]


def test_the_model_calls_mcp_tools_through_the_session(system: SystemProcess, llm: ScriptedLLM) -> None:
    results = call_tools(
        llm,
        system,
        "mcp-model",
        "helper",
        ToolCall("multiply", {"a": 6, "b": 7}, id="m"),
        ToolCall("mcp_demo_lookup", {"key": "colour"}, id="remote"),
        ToolCall("lookup", {"key": "colour"}, id="local"),
    )
    assert results == {"m": "42", "remote": "teal", "local": "local value of colour"}


def test_an_mcp_resource_is_knowledge(system: SystemProcess, llm: ScriptedLLM) -> None:
    since = len(llm.received)
    llm.script("PAPAYA", model="mcp-model")
    send(system, "helper", "What is the code word?")
    system_message = bodies_for(llm, "mcp-model", since)[0]["messages"][0]
    assert system_message["role"] == "system"
    assert system_message["content"].startswith("You can use tools.")
    assert FACTS in system_message["content"]


def test_a_failing_mcp_tool_is_a_tool_error(system: SystemProcess, llm: ScriptedLLM) -> None:
    results = call_tools(llm, system, "mcp-model", "helper", ToolCall("explode", {"reason": "on purpose"}, id="x"))
    assert results["x"].startswith("Error: ToolError: ")
    assert "explode" in results["x"]
    assert call_tools(llm, system, "mcp-model", "helper", ToolCall("multiply", {"a": 2, "b": 3}, id="y")) == {
        "y": "6"
    }


def test_a_dead_server_is_reported_and_reconnected_on_the_next_call(
    system: SystemProcess, llm: ScriptedLLM
) -> None:
    first_pid = int(call_tools(llm, system, "mcp-model", "helper", ToolCall("server_pid", {}, id="p"))["p"])
    os.kill(first_pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(first_pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    # The call that finds the server dead fails as a tool error; the run still answers.
    failed = call_tools(llm, system, "mcp-model", "helper", ToolCall("multiply", {"a": 3, "b": 3}, id="dead"))
    assert failed["dead"].startswith("Error: MCPError: Connection closed")
    assert "MCP server 'mcp_demo' is gone" in system.log_text()
    # The next call connects again, to a new server process.
    again = call_tools(
        llm,
        system,
        "mcp-model",
        "helper",
        ToolCall("multiply", {"a": 3, "b": 3}, id="alive"),
    )
    assert again == {"alive": "9"}
    second_pid = int(call_tools(llm, system, "mcp-model", "helper", ToolCall("server_pid", {}, id="p2"))["p2"])
    assert second_pid != first_pid
    status = {agent["name"]: agent for agent in system.status()["agents"]}
    assert status["helper"]["restarts"] == 0


def _alive(pid: int) -> bool:
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# -- Streamable HTTP, failures, and the end of the servers ------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[str]:
    """The demo server on Streamable HTTP, answering only requests with `X-Test-Token: sesame`."""
    port = _free_port()
    script = tmp_path / "mcp_demo_server.py"
    script.write_text(SERVER_SOURCE)
    process = subprocess.Popen(
        [sys.executable, str(script), "http", str(port)],
        env={**os.environ, "MCP_TEST_TOKEN": "sesame"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the MCP HTTP server did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.kill()
        process.wait(10)


HTTP_CONFIG = """\
agents:
  remote:
    model: openai/http-model
    api_base: {url}
    api_key_env: LLT_API_KEY
    mcp_servers:
      - type: streamable-http
        name: remote_demo
        url: {mcp_url}
        headers: {{X-Test-Token: sesame}}
  denied:
    model: openai/denied-model
    api_base: {url}
    api_key_env: LLT_API_KEY
    mcp_servers:
      - {{type: streamable-http, name: no_token, url: "{mcp_url}"}}
  local:
    model: openai/stdio-model
    api_base: {url}
    api_key_env: LLT_API_KEY
    mcp_servers:
      - {{type: stdio, command: python, args: [mcp_demo.py], env: {{DEMO: "1"}}}}
"""


def test_streamable_http_with_headers_a_failing_server_and_the_end_of_stdio_servers(
    systems: Systems, llm: ScriptedLLM, http_server: str, tmp_path: Path
) -> None:
    system = systems.start(
        HTTP_CONFIG.format(url=llm.url, mcp_url=http_server),
        modules={"mcp_demo": SERVER_SOURCE},
        env={"LLT_API_KEY": API_KEY, "XDG_STATE_HOME": str(tmp_path / "state")},
        until=lambda status: (
            {a["name"]: a["state"] for a in status["agents"]}
            == {"remote": "ready", "denied": "failed", "local": "ready"}
        ),
    )
    # The headers reach the server: its tools answer.
    assert call_tools(llm, system, "http-model", "remote", ToolCall("multiply", {"a": 7, "b": 6}, id="h")) == {
        "h": "42"
    }
    # Without them the server refuses, and the agent's start fails naming the MCP component.
    status = {agent["name"]: agent for agent in system.status()["agents"]}
    assert "component 'mcp:no_token' failed" in status["denied"]["error"]
    assert http_server in status["denied"]["error"]
    # A stdio server runs while its agent runs, and ends with the system.
    pid = int(call_tools(llm, system, "stdio-model", "local", ToolCall("server_pid", {}, id="p"))["p"])
    assert _alive(pid)
    system.stop()
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)
