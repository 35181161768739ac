"""`llmling.config`: the schema, `${VAR}` interpolation, and errors that name `file:LINE` and the key path;
plus `llmling validate` and `llmling schema`."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from llmling.config import SystemConfig, json_schema, load_config, parse_config
from llmling.errors import ConfigError
from llmling.testing import llmling_command

VALID = """\
name: demo
max_hops: 3
shutdown_timeout: 2.5
agents:
  analyzer:
    model: openai/gpt-4o-mini
    system_prompt: Be brief.
    api_base: http://127.0.0.1:9/v1
    api_key_env: DEMO_KEY
    model_settings:
      temperature: 0.2
      max_tokens: 100
      stop: ["\\n\\n"]
    connections: [summarizer, printer]
  summarizer:
    model: local/smollm2
  printer:
    callback: tools.printing:show
"""


def parse(text: str) -> SystemConfig:
    return parse_config(textwrap.dedent(text), "cfg.yml")


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    return str(caught.value)


def test_a_valid_config() -> None:
    config = parse(VALID)
    assert config.name == "demo"
    assert config.max_hops == 3
    assert config.shutdown_timeout == 2.5
    assert list(config.agents) == ["analyzer", "summarizer", "printer"]
    analyzer = config.agents["analyzer"]
    assert analyzer.model == "openai/gpt-4o-mini"
    assert analyzer.model_settings.temperature == 0.2
    assert analyzer.model_settings.max_tokens == 100
    assert analyzer.model_settings.stop == ["\n\n"]
    assert [connection.name for connection in analyzer.connections] == ["summarizer", "printer"]
    assert analyzer.local_model is None
    assert config.agents["summarizer"].local_model == "smollm2"
    assert config.agents["printer"].callback == "tools.printing:show"
    assert config.needs_llm
    assert config.local_models == {"smollm2"}


def test_defaults_and_the_name_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "my-system.yml"
    path.write_text("agents:\n  a:\n    callback: m:f\n")
    config = load_config(path)
    assert config.name == "my-system"
    assert config.max_hops == 16
    assert config.shutdown_timeout == 10.0
    assert config.source == path.resolve()
    assert config.base_dir == tmp_path.resolve()
    assert not config.needs_llm
    assert config.agents["a"].connections == []


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yml")


# -- interpolation -------------------------------------------------------------------------------------------
def test_env_vars_are_interpolated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLT_MODEL", "openai/gpt-4o")
    monkeypatch.setenv("LLT_HOST", "10.1.2.3")
    monkeypatch.setenv("LLT_HOPS", "5")
    config = parse(
        """\
        max_hops: ${LLT_HOPS}
        agents:
          a:
            model: ${LLT_MODEL}
            api_base: http://${LLT_HOST}:${LLT_PORT:-8080}/v1
            system_prompt: "${LLT_UNSET_PROMPT:-You help.} Always."
        """
    )
    assert config.max_hops == 5
    agent = config.agents["a"]
    assert agent.model == "openai/gpt-4o"
    assert agent.api_base == "http://10.1.2.3:8080/v1"
    assert agent.system_prompt == "You help. Always."


def test_a_set_variable_wins_over_the_default_and_empty_takes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLT_SET", "given")
    monkeypatch.setenv("LLT_EMPTY", "")
    config = parse(
        """\
        agents:
          a:
            callback: m:f
            system_prompt: ${LLT_SET:-default}/${LLT_EMPTY:-fallback}/${LLT_EMPTY:-}
        """
    )
    assert config.agents["a"].system_prompt == "given/fallback/"


def test_a_missing_variable_names_line_key_and_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLT_MISSING", raising=False)
    message = error_of(
        """\
        agents:
          a:
            callback: m:f
            connections: []
            system_prompt: hello ${LLT_MISSING}
        """
    )
    assert message.startswith("cfg.yml:5: agents.a.system_prompt: ")
    assert "LLT_MISSING is not set" in message


# -- errors: file:line and key path --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            """\
            agents:
              a:
                callback: m:f
                colour: blue
            """,
            "cfg.yml:4: agents.a.colour: unknown key",
            id="unknown-agent-key",
        ),
        pytest.param(
            """\
            name: x
            agents:
              a:
                callback: m:f
            extra_top: 1
            """,
            "cfg.yml:5: extra_top: unknown key",
            id="unknown-top-key",
        ),
        pytest.param(
            """\
            agents:
              a:
                callback: m:f
                model_settings:
                  temperature: 0.5
                  top_k: 3
            """,
            "cfg.yml:6: agents.a.model_settings.top_k: unknown key",
            id="unknown-nested-key",
        ),
        pytest.param(
            """\
            agents:
              a:
                callback: m:f
                connections:
                  - a
                  - ghost
            """,
            "cfg.yml:6: agents.a.connections.1: unknown agent 'ghost'",
            id="unknown-connection",
        ),
        pytest.param(
            """\
            agents:
              a:
                callback: m:f
                model_settings:
                  temperature: hot
            """,
            "cfg.yml:5: agents.a.model_settings.temperature: Input should be a valid number",
            id="bad-type",
        ),
        pytest.param(
            """\
            agents:
              a:
                callback: m:f
                connections: b
            """,
            "cfg.yml:4: agents.a.connections: Input should be a valid list",
            id="bad-type-list",
        ),
        pytest.param(
            """\
            agents:
              a:
                callback: m:f
              b:
                system_prompt: nothing to run
            """,
            "cfg.yml:4: agents.b: set exactly one of 'model' or 'callback'",
            id="missing-model-and-callback",
        ),
        pytest.param(
            """\
            agents:
              a:
                callback: m:f
              b:
                model: openai/x
                callback: m:f
            """,
            "cfg.yml:4: agents.b: set exactly one of 'model' or 'callback'",
            id="both-model-and-callback",
        ),
        pytest.param(
            """\
            agents:
              a:
                callback: not-a-path
            """,
            "cfg.yml:3: agents.a.callback: must be an import path of the form 'module:function'",
            id="bad-callback",
        ),
        pytest.param(
            """\
            max_hops: 0
            agents:
              a:
                callback: m:f
            """,
            "cfg.yml:1: max_hops: Input should be greater than or equal to 1",
            id="out-of-range",
        ),
        pytest.param(
            """\
            name: x
            """,
            "cfg.yml:1: agents: Field required",
            id="no-agents",
        ),
        pytest.param(
            """\
            agents:
              a:
                callback: m:f
               bad: indent
            """,
            "cfg.yml:4: invalid YAML",
            id="invalid-yaml",
        ),
        pytest.param(
            """\
            agents:
              a:
            \tcallback: m:f
            """,
            "cfg.yml:3: invalid YAML",
            id="invalid-yaml-tab",
        ),
        pytest.param("- a\n- b\n", "cfg.yml:1: the config must be a mapping", id="not-a-mapping"),
        pytest.param(
            """\
            agents:
              a:
                callback: m:f
            source: /elsewhere/system.yml
            """,
            "cfg.yml:4: source: unknown key",
            id="source-is-not-a-key",
        ),
    ],
)
def test_errors_name_file_line_and_key(text: str, expected: str) -> None:
    message = error_of(text)
    assert message.startswith(expected), message
    assert "\n" not in message


def test_every_problem_is_reported_on_its_own_line() -> None:
    message = error_of(
        """\
        agents:
          a:
            callback: m:f
            bogus: 1
          b:
            callback: m:f
            model_settings:
              max_tokens: -1
        """
    )
    assert message.splitlines() == [
        "cfg.yml:4: agents.a.bogus: unknown key",
        "cfg.yml:8: agents.b.model_settings.max_tokens: Input should be greater than 0",
    ]


def test_json_schema_describes_the_config() -> None:
    schema = json_schema()
    assert schema["type"] == "object"
    assert {"agents", "name", "max_hops"} <= set(schema["properties"])
    agent = schema["$defs"]["AgentConfig"]
    assert agent["additionalProperties"] is False
    assert {"model", "callback", "connections", "model_settings"} <= set(agent["properties"])
    assert "source" not in schema["properties"]


# -- the commands --------------------------------------------------------------------------------------------
def llmling(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    command = [*llmling_command(), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=cwd, env=env)


def test_validate_accepts_a_valid_config(tmp_path: Path) -> None:
    path = tmp_path / "demo.yml"
    path.write_text(VALID)
    (tmp_path / "tools").mkdir()
    # validate imports it
    (tmp_path / "tools" / "printing.py").write_text("def show(prompt):\n    return prompt\n")
    done = llmling("validate", str(path), env={**os.environ, "DEMO_KEY": "sk-demo"})  # validate checks keys
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{path}: ok (system 'demo', 3 agents)"


def test_validate_exits_2_with_one_line_per_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    path.write_text("agents:\n  a:\n    callback: m:f\n    bogus: 1\n  b:\n    connections: []\n")
    done = llmling("validate", str(path))
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"error: {path}:4: agents.a.bogus: unknown key",
        f"{path}:5: agents.b: set exactly one of 'model' or 'callback'",
    ]


def test_validate_a_missing_file_exits_2(tmp_path: Path) -> None:
    done = llmling("validate", str(tmp_path / "missing.yml"))
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1
    assert "missing.yml" in done.stderr


def test_validate_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yml"
    path.write_text("name: x\nagents:\n  a: {callback: m:f\n")
    done = llmling("validate", str(path))
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith(f"error: {path}:4: invalid YAML")


def test_schema_prints_valid_json_schema() -> None:
    done = llmling("schema")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == json_schema()
