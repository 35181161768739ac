"""Hostile and careless config files: alias bombs, duplicate keys, binary, invalid UTF-8, too large, too deep.
Each is refused with one line naming `file:line`, exit 2 from the CLI, and no traceback."""

from __future__ import annotations

import resource
import subprocess
import textwrap
from pathlib import Path

import pytest

from llmling.config import load_config, parse_config
from llmling.config.safe_yaml import MAX_ALIASES, MAX_CONFIG_BYTES, MAX_DEPTH
from llmling.errors import ConfigError
from llmling.testing import llmling_command

# The classic "billion laughs": 9 levels of 9 aliases, 342 bytes, 387,420,489 strings once expanded.
ALIAS_BOMB = "".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n',
        *(f"{c}: &{c} [{','.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)),
    ]
)
# Memory and CPU caps for the CLI under attack: the old loader needed ~6 GB and 64 s for the bomb.
MEMORY_CAP = 1536 * 1024 * 1024
CPU_CAP_S = 20


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(textwrap.dedent(text), "cfg.yml")
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_CAP_S, CPU_CAP_S))


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    """`llmling validate PATH` under the memory and CPU caps."""
    return subprocess.run(
        [*llmling_command(), "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_limits,
    )


def assert_refused(done: subprocess.CompletedProcess[str], expected: str) -> None:
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(f"error: {expected}"), done.stderr


def test_an_alias_bomb_is_refused_under_a_memory_cap(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yml"
    path.write_text(ALIAS_BOMB)
    # Under the caps: the old loader died of them (MemoryError after ~6 GB, or SIGKILL for CPU).
    done = validate(path)
    assert_refused(done, f"{path}:")
    assert "aliases expand this node to more than" in done.stderr


def test_aliases_and_merge_keys_within_the_budget_work() -> None:
    config = parse_config(
        textwrap.dedent(
            """\
            agents:
              a: &base
                callback: m:f
                system_prompt: shared
              b:
                <<: *base
                system_prompt: own
            """
        ),
        "cfg.yml",
    )
    assert config.agents["b"].callback == "m:f"
    assert config.agents["b"].system_prompt == "own"


def test_too_many_aliases() -> None:
    uses = ", ".join(["*x"] * (MAX_ALIASES + 1))
    message = error_of(f"x: &x 1\ny: [{uses}]\n")
    assert message.startswith("cfg.yml:2: invalid YAML: more than 200 aliases")


def test_an_alias_inside_itself() -> None:
    assert error_of("a: &a [1, *a]\n").startswith("cfg.yml:1: invalid YAML: an alias refers to a node")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            """\
            agents:
              a: {callback: m:f}
            agents:
              b: {callback: m:g}
            """,
            "cfg.yml:3: agents: duplicate key 'agents' (first at line 1)",
            id="top-level-agents-twice",
        ),
        pytest.param(
            """\
            agents:
              writer: {callback: m:f}
              reader: {callback: m:g}
              writer: {callback: m:h}
            """,
            "cfg.yml:4: agents.writer: duplicate key 'writer' (first at line 2)",
            id="agent-name-twice",
        ),
        pytest.param(
            """\
            agents:
              a:
                callback: m:f
                system_prompt: one
                system_prompt: two
            """,
            "cfg.yml:5: agents.a.system_prompt: duplicate key 'system_prompt' (first at line 4)",
            id="field-twice",
        ),
    ],
)
def test_duplicate_keys_are_errors(text: str, expected: str) -> None:
    assert error_of(text) == expected


def test_nesting_too_deep_in_flow_and_block_style() -> None:
    flow = error_of("agents: " + "[" * 5000 + "]" * 5000 + "\n")
    assert flow == f"cfg.yml:1: invalid YAML: nested more than {MAX_DEPTH} levels deep"
    block = "x:\n" + "".join("  " * depth + "-\n" for depth in range(1, 200))
    assert error_of(block).startswith(f"cfg.yml:{MAX_DEPTH + 1}: invalid YAML: nested more than")


def test_bad_scalar_values_name_their_line() -> None:
    assert error_of("agents: {}\nx: !!int abc\n").startswith("cfg.yml:2: invalid YAML: invalid value for")
    assert error_of("agents: {}\nx: !!timestamp abc\n").startswith("cfg.yml:2: invalid YAML: invalid value")
    assert error_of("agents: {}\nx: \x07\n").startswith("cfg.yml:2: invalid YAML: special characters")


@pytest.mark.parametrize(
    ("data", "line", "problem"),
    [
        pytest.param(b"agents:\n  a: \x00\x01\x02\x7f", 2, "not a text file", id="binary"),
        pytest.param(b"name: x\nagents:\n  a: {callback: m:f}\n  b: \xff\xfe\n", 4, "not valid UTF-8", id="utf8"),
        pytest.param(b"a: b\n" * (MAX_CONFIG_BYTES // 5 + 1), 1, "the file is too large", id="large"),
        pytest.param(b"agents: " + b"{a: " * 5000 + b"1" + b"}" * 5000, 1, "invalid YAML: nested", id="deep"),
    ],
)
def test_unreadable_files_exit_2_with_file_and_line(tmp_path: Path, data: bytes, line: int, problem: str) -> None:
    path = tmp_path / "bad.yml"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}:{line}: "), caught.value
    assert problem in str(caught.value)
    assert_refused(validate(path), f"{path}:{line}: ")


def test_a_directory_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert str(caught.value) == f"{tmp_path}: cannot read config: Is a directory"
