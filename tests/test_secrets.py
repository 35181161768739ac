"""Secrets: scrubbed agent environments, redacted logs, quiet library use, and a leak hunt over a real system.

The leak test plants known keys in the environment of `llmling up` and searches every output of the system
for them: the output of `send`, `status --json`, `history --json`, the log of `up`, history.db, and the
`/proc/<pid>/environ` and `cmdline` of every process of the system (supervisor, forkserver, resource tracker,
agents, the MCP server), except where a process's own config names the key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import textwrap
import urllib.request
import uuid
from pathlib import Path

import pytest

from llmling.config import parse_config
from llmling.supervisor.environment import agent_environment, base_environment
from llmling.testing import Reply, ScriptedLLM
from tests._automation import free_port
from tests.conftest import Systems
from tests.test_entry_points import run_notebook

SERVER_SOURCE = (Path(__file__).parent / "mcp_demo_server.py").read_text()

# An agent whose reply is its whole environment, so whatever it can see ends up in every output.
ENV_DUMP = """
import json
import os


def dump(prompt):
    return json.dumps(dict(os.environ), sort_keys=True)
"""


def planted(kind: str) -> str:
    return f"sk-planted-{kind}-{uuid.uuid4().hex}"


# -- the policy ----------------------------------------------------------------------------------------------
POLICY_CONFIG = """
agents:
  gpt:
    model: openai/gpt-4o-mini
    system_prompt: "You work for ${LLT_TEAM}."
    mcp_servers:
      - {type: stdio, command: python, args: [server.py], env: {SERVER_TOKEN: "${LLT_SERVER_TOKEN}"}}
  keyed:
    model: anthropic/claude-3-5-haiku
    api_key_env: LLT_CLAUDE_KEY
  plain:
    callback: cb:echo
    env_passthrough: [LLT_PASS]
    env: {LLT_SET: given, LANG: C.UTF-8}
    triggers:
      - {type: webhook, name: hook, port: 9, secret_env: LLT_HOOK, template: "${LLT_IN_TRIGGER}"}
"""

POLICY_ENV = {
    "PATH": "/usr/bin",
    "HOME": "/home/u",
    "LANG": "en_US.UTF-8",
    "LC_ALL": "en_US.UTF-8",
    "XDG_CONFIG_HOME": "/home/u/.config",
    "HTTPS_PROXY": "http://proxy:3128",
    "SSL_CERT_FILE": "/etc/ssl/cert.pem",
    "OPENAI_API_KEY": "sk-openai",
    "ANTHROPIC_API_KEY": "sk-anthropic",
    "LLT_CLAUDE_KEY": "sk-claude",
    "LLT_TEAM": "acme",
    "LLT_SERVER_TOKEN": "tok",
    "LLT_PASS": "passed",
    "LLT_HOOK": "hook-secret",
    "LLT_IN_TRIGGER": "t",
    "AWS_SECRET_ACCESS_KEY": "aws",
}


def test_each_agent_gets_the_allow_list_and_what_its_own_config_names(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in POLICY_ENV.items():
        monkeypatch.setenv(name, value)
    config = parse_config(POLICY_CONFIG, "system.yml")
    base = {
        key: POLICY_ENV[key]
        for key in ("PATH", "HOME", "LANG", "LC_ALL", "XDG_CONFIG_HOME", "HTTPS_PROXY", "SSL_CERT_FILE")
    }
    assert base_environment(POLICY_ENV) == base
    # Its provider's key, the ${VAR}s of its section; SERVER_TOKEN (its MCP server's env) is not set here.
    named = {"OPENAI_API_KEY": "sk-openai", "LLT_TEAM": "acme", "LLT_SERVER_TOKEN": "tok"}
    assert agent_environment(config.agents["gpt"], POLICY_ENV) == {**base, **named}
    # api_key_env replaces the provider's variables.
    assert agent_environment(config.agents["keyed"], POLICY_ENV) == {**base, "LLT_CLAUDE_KEY": "sk-claude"}
    # The webhook's secret and its trigger's ${VAR} belong to the supervisor; `env:` wins over the base.
    plain = {**base, "LLT_PASS": "passed", "LLT_SET": "given", "LANG": "C.UTF-8"}
    assert agent_environment(config.agents["plain"], POLICY_ENV) == plain


def test_bad_env_names_are_config_errors() -> None:
    from llmling.errors import ConfigError

    with pytest.raises(ConfigError, match=r"system.yml:4: agents.a.env_passthrough.*not an environment"):
        parse_config("agents:\n  a:\n    callback: cb:echo\n    env_passthrough: ['A B']\n", "system.yml")


# -- the leak hunt over a real system ------------------------------------------------------------------------
LEAK_CONFIG = """
agents:
  keyed:
    model: openai/leak-keyed
    api_base: {url}
    api_key_env: LLT_KEYED_KEY
    mcp_servers:
      - {{type: stdio, command: python, args: [mcp_demo.py], env: {{DEMO_TOKEN: "${{LLT_MCP_TOKEN}}"}}}}
  gpt:
    model: openai/leak-gpt
    api_base: {url}
  plain:
    callback: envdump:dump
    env_passthrough: [LLT_PASS]
    env: {{LLT_SET: given}}
    triggers:
      - {{type: webhook, name: hook, port: {port}, path: /hook, secret_env: LLT_HOOK_SECRET}}
"""


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        current = todo.pop()
        seen.append(current)
        todo.extend(_children(current))
    return seen


def proc_text(pid: int, name: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return b""


def test_planted_keys_reach_no_output_and_no_other_process(
    systems: Systems, llm: ScriptedLLM, tmp_path: Path
) -> None:
    keys = {
        "LLT_KEYED_KEY": planted("keyed"),  # keyed's api_key_env
        "OPENAI_API_KEY": planted("openai"),  # gpt's provider key
        "ANTHROPIC_API_KEY": planted("anthropic"),  # no agent uses it
        "LLT_HOOK_SECRET": planted("hook"),  # the webhook's secret: the supervisor's alone
        "LLT_MCP_TOKEN": planted("mcp"),  # named by keyed's MCP server
    }
    # Where each key may be: the processes whose own config names it.
    owners = {"LLT_KEYED_KEY": {"keyed"}, "OPENAI_API_KEY": {"gpt"}, "LLT_MCP_TOKEN": {"keyed", "mcp"}}
    port = free_port()
    # The model echoes the key it was given in its 401, as some providers do.
    llm.script(
        *[Reply(f"Incorrect API key provided: {keys['LLT_KEYED_KEY']}", status=401)] * 4, model="leak-keyed"
    )
    system = systems.start(
        LEAK_CONFIG.format(url=llm.url, port=port),
        modules={"mcp_demo": SERVER_SOURCE, "envdump": ENV_DUMP},
        env={**keys, "LLT_PASS": "passed-through"},
    )
    folder = system.config.parent

    outputs: dict[str, str] = {}
    for agent in ("keyed", "gpt", "plain"):
        done = system.cli("send", agent, f"hello {agent}", "--json")
        outputs[f"send {agent}"] = done.stdout + done.stderr
    assert "Incorrect API key provided: ***" in outputs["send keyed"], outputs["send keyed"]
    assert json.loads(outputs["send gpt"])["content"] == "echo: hello gpt"
    plain_env = json.loads(json.loads(outputs["send plain"])["content"])
    assert plain_env["LLT_PASS"] == "passed-through" and plain_env["LLT_SET"] == "given"
    # The keys did reach the agents that need them.
    headers = [item.headers for item in llm.received if item.body.get("model") in ("leak-keyed", "leak-gpt")]
    authorizations = {h.get("Authorization") or h.get("authorization") for h in headers}
    assert (
        f"Bearer {keys['LLT_KEYED_KEY']}" in authorizations
        and f"Bearer {keys['OPENAI_API_KEY']}" in authorizations
    )

    body = b'{"event": "push"}'
    signature = "sha256=" + hmac.new(keys["LLT_HOOK_SECRET"].encode(), body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/hook?wait=true",
        data=body,
        headers={"Content-Type": "application/json", "X-Hub-Signature-256": signature},
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        outputs["webhook"] = answer.read().decode()
    assert json.loads(outputs["webhook"])["content"]

    status = json.loads(system.cli("status", "--json").stdout)
    outputs["status"] = json.dumps(status)
    for agent in ("keyed", "gpt", "plain"):
        done = system.cli("history", agent, "--json")
        outputs[f"history {agent}"] = done.stdout + done.stderr

    # Every process of the system, while it runs: its tagged processes and whatever they started.
    pids = {agent["name"]: agent["pid"] for agent in status["agents"]}
    mcp = [pid for pid in descendants(pids["keyed"]) if pid != pids["keyed"]]
    assert mcp, "the MCP server of 'keyed' is not running"
    processes = {pid: "other" for pid in set(system.processes()) | set(descendants(system.pid))}
    processes.update({pid: name for name, pid in pids.items()})
    processes.update(dict.fromkeys(mcp, "mcp"))
    processes[system.pid] = "supervisor"
    assert len(processes) >= 7  # supervisor, forkserver, resource tracker, 3 agents, the MCP server
    leaks = []
    for pid, role in processes.items():
        environ, cmdline = proc_text(pid, "environ"), proc_text(pid, "cmdline")
        for name, value in keys.items():
            if value.encode() in cmdline:
                leaks.append(f"{role} ({pid}) cmdline: {name}")
            # The supervisor got every key from its caller; no other process may have one it does not need.
            if value.encode() in environ and role != "supervisor" and role not in owners.get(name, set()):
                leaks.append(f"{role} ({pid}) environ: {name}")

    assert system.stop() == 0
    outputs["up log"] = system.log_text()
    databases = list((folder / "state").rglob("history.db*"))
    assert databases, "no history.db was written"
    for path in databases:
        outputs[str(path)] = path.read_bytes().decode("latin-1")
    for where, text in outputs.items():
        leaks += [f"{where}: {name}" for name, value in keys.items() if value in text]
    assert not leaks, "\n".join(leaks)


# -- library use ---------------------------------------------------------------------------------------------
FAILING_PROGRAM = """
import asyncio
from llmling import Agent


async def main():
    async with Agent(model="openai/{model}", api_base="{url}", api_key_env="LLT_LIB_KEY") as agent:
        await agent.run("hello")


asyncio.run(main())
"""


def run_failing(llm: ScriptedLLM, tmp_path: Path, model: str, **env: str) -> tuple[str, str]:
    key = planted("library")
    llm.script(*[Reply(f"Incorrect API key provided: {key}", status=401)] * 4, model=model)
    program = textwrap.dedent(FAILING_PROGRAM.format(model=model, url=llm.url))
    environment = {
        **os.environ,
        "LLT_LIB_KEY": key,
        "XDG_RUNTIME_DIR": str(tmp_path),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        **env,
    }
    if "LLMLING_LOG_LEVEL" not in env:
        environment.pop("LLMLING_LOG_LEVEL", None)
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120, env=environment, cwd=tmp_path
    )
    assert done.returncode == 1
    return done.stdout + done.stderr, key


def test_a_failing_run_under_python_c_prints_no_locals_and_no_secret(llm: ScriptedLLM, tmp_path: Path) -> None:
    output, key = run_failing(llm, tmp_path, "lib-quiet")
    assert key not in output
    assert "'api_key'" not in output, output  # no local variables (litellm's arguments) in any traceback
    last = output.strip().splitlines()[-1]
    assert last.startswith("llmling.errors.AgentRunError") and "Incorrect API key provided: ***" in last, output
    # The library logged nothing: the only traceback is the caller's own.
    assert output.count("Traceback") == 1, output


def test_library_logging_when_enabled_is_redacted(llm: ScriptedLLM, tmp_path: Path) -> None:
    output, key = run_failing(llm, tmp_path, "lib-loud", LLMLING_LOG_LEVEL="INFO")
    assert key not in output
    assert "'api_key'" not in output, output
    assert "[agent] run " in output and "failed" in output, output  # the agent's own log line, shown


def test_a_failing_run_in_jupyter_shows_no_locals_and_no_secret(llm: ScriptedLLM, tmp_path: Path) -> None:
    key = planted("jupyter")
    llm.script(*[Reply(f"Incorrect API key provided: {key}", status=401)] * 4, model="lib-jupyter")
    cell = textwrap.dedent(
        f"""
        from llmling import Agent

        async with Agent(model="openai/lib-jupyter", api_base="{llm.url}", api_key_env="LLT_LIB_KEY") as agent:
            await agent.run("hello")
        """
    )
    env = {
        **os.environ,
        "LLT_LIB_KEY": key,
        "XDG_RUNTIME_DIR": str(tmp_path),
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }
    env.pop("LLMLING_LOG_LEVEL", None)
    output = run_notebook(tmp_path, [cell], env, allow_errors=True)
    assert "AgentRunError" in output and "Incorrect API key provided: ***" in output, output
    assert key not in output
    assert "'api_key'" not in output, output


def test_sinks_mask_secrets_in_messages_and_tracebacks_without_locals() -> None:
    import io

    from loguru import logger

    from llmling import logs

    key = planted("sink")
    logs.add_secrets([key, "short"])  # too short to mask: ordinary words stay readable
    stream = io.StringIO()
    sink = logs.add_sink(stream, "INFO")
    try:

        def call(api_key: str) -> None:
            raise RuntimeError(f"rejected {api_key}")

        try:
            call(key)
        except RuntimeError as exc:
            logger.opt(exception=exc).warning("the key {} and a short word", key)
    finally:
        logger.remove(sink)
    text = stream.getvalue()
    assert key not in text
    assert "the key *** and a short word" in text and "RuntimeError: rejected ***" in text, text
    assert "'api_key'" not in text and "└" not in text, text  # no variables under the traceback's lines
