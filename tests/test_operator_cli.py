"""What an operator sees at the command line: "did you mean" for unknown agent names, shell completion of the
running system's agent names, `validate` resolving every import path, and MCP server names in errors."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from llmling.names import unknown
from llmling.testing import SystemProcess, llmling_command
from tests.conftest import Systems

CONFIG = """
agents:
  analyzer: {callback: 'cb:echo'}
  summarizer: {callback: 'cb:upper'}
  writer:
    callback: cb:echo
    triggers:
      - {type: time, name: tick, interval_s: 3600, prompt: go}
"""


@pytest.fixture(scope="module")
def system(module_systems: Systems) -> SystemProcess:
    return module_systems.start(CONFIG)


def test_unknown_names_message() -> None:
    assert unknown("agent", "analyser", ["writer", "analyzer"]) == (
        "unknown agent 'analyser'; did you mean 'analyzer'? (agents: analyzer, writer)"
    )
    assert unknown("agent", "zzz", ["b", "a"]) == "unknown agent 'zzz' (agents: a, b)"
    many = unknown("agent", "zzz", [f"agent{i:02}" for i in range(30)])
    assert many.endswith("agent11, …)")


@pytest.mark.parametrize(
    "command",
    [
        ["send", "analyser", "hi"],
        ["history", "analyser"],
        ["logs", "analyser"],
        ["trigger", "disable", "analyser", "tick"],
        ["watch", "--agent", "analyser"],
    ],
)
def test_unknown_agent_gets_did_you_mean(system: SystemProcess, command: list[str]) -> None:
    done = system.cli(*command, timeout=30)
    assert done.returncode != 0
    assert "unknown agent 'analyser'; did you mean 'analyzer'?" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_watch_unknown_agent_when_it_starts_the_system(tmp_path: Path) -> None:
    config = tmp_path / "solo.yml"
    config.write_text("agents:\n  analyzer: {callback: 'cb:echo'}\n")
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state")}
    done = subprocess.run(
        [*llmling_command(), "watch", str(config), "--agent", "nosuch"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode != 0
    assert "unknown agent 'nosuch' (agents: analyzer)" in done.stderr, done.stderr


def _complete(words: str, env: dict[str, str]) -> list[str]:
    """What bash completion offers for the last word of `words` (click's bash_complete protocol)."""
    parts = words.split(" ")
    done = subprocess.run(
        llmling_command(),
        capture_output=True,
        text=True,
        timeout=30,
        env={**env, "_LLMLING_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(len(parts) - 1)},
    )
    assert done.returncode == 0, done.stderr
    return [line.split(",", 1)[1] for line in done.stdout.splitlines() if line.startswith("plain,")]


def test_shell_completion_of_agent_names(system: SystemProcess) -> None:
    env = {**system.env, "LLMLING_SOCKET": str(system.socket)}
    assert _complete("llmling send ", env) == ["analyzer", "summarizer", "writer"]
    assert _complete("llmling send s", env) == ["summarizer"]
    assert _complete("llmling trigger enable w", env) == ["writer"]
    assert _complete("llmling watch --agent a", env) == ["analyzer"]
    no_env = {key: value for key, value in system.env.items() if key != "LLMLING_SOCKET"}
    assert _complete(f"llmling history --socket {system.socket} a", no_env) == ["analyzer"]
    # No system: nothing to offer, and no error.
    assert _complete("llmling send a", {**env, "LLMLING_SOCKET": str(system.socket) + ".none"}) == []


# -- validate resolves import paths ------------------------------------------------------------------------------
HOOKS = """
import sys

print("the hooks module ran")
if "litellm" in sys.modules:
    raise RuntimeError("validate imported litellm")


def ok(prompt):
    return prompt


NOT_CALLABLE = 3
"""


def _validate(tmp_path: Path, config: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "hooks.py").write_text(HOOKS)
    path = tmp_path / "agents.yml"
    path.write_text(textwrap.dedent(config))
    return subprocess.run(
        [*llmling_command(), "validate", str(path)], capture_output=True, text=True, timeout=60, cwd="/"
    )


def test_validate_resolves_import_paths(tmp_path: Path) -> None:
    done = _validate(
        tmp_path,
        """
        agents:
          a:
            callback: hooks:nosuch
            connections:
              - name: b
                transform: hooks:NOT_CALLABLE
                filter: nomod:f
                stop_condition: hooks:ok
          b:
            model: openai/x
            api_base: http://127.0.0.1:9/v1
            tools: [hooks:ok, hooks:missing_tool]
        """,
    )
    assert done.returncode == 2
    path = tmp_path / "agents.yml"
    assert done.stderr.splitlines() == [
        f"error: {path}:4: agents.a.callback: hooks:nosuch: module 'hooks' has no attribute 'nosuch'",
        f"error: {path}:7: agents.a.connections.0.transform: hooks:NOT_CALLABLE is not callable",
        f"error: {path}:8: agents.a.connections.0.filter: module 'nomod' not found (looked in the config's folder "
        "and sys.path)",
        f"error: {path}:13: agents.b.tools.1: hooks:missing_tool: module 'hooks' has no attribute 'missing_tool'",
    ]
    assert "the hooks module ran" not in done.stdout  # the user's module ran in the checking child only


def test_validate_ok_and_failing_import(tmp_path: Path) -> None:
    done = _validate(tmp_path, "agents:\n  a: {callback: 'hooks:ok'}\n")
    assert done.returncode == 0, done.stderr
    assert "ok (system 'agents', 1 agent)" in done.stdout
    (tmp_path / "broken.py").write_text("raise SystemExit('no')\n")
    done = _validate(tmp_path, "agents:\n  a: {callback: 'broken:f'}\n")
    assert done.returncode == 2
    assert ":2: agents.a.callback: broken:f: importing 'broken' failed: SystemExit: no" in done.stderr


def test_unknown_mcp_server_lists_the_names() -> None:
    from llmling.config import parse_config
    from llmling.errors import ConfigError

    text = textwrap.dedent(
        """
        agents:
          a:
            model: openai/x
            mcp_servers: [{url: "http://127.0.0.1:9/mcp"}, "python tools_server.py"]
            knowledge:
              resources: [{uri: 'docs://x', server: 127.0.0.1}]
        """
    )
    with pytest.raises(ConfigError) as error:
        parse_config(text, "agents.yml")
    assert (
        "unknown MCP server '127.0.0.1'; did you mean '127_0_0_1'? (MCP servers: 127_0_0_1, tools_server)"
        in str(error.value)
    )
