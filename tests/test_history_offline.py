"""The state folder is keyed by the config's path, and `llmling history` reads history.db when no system runs."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from llmling.config import load_config
from llmling.config.state import default_state_dir, path_key
from llmling.testing import SystemProcess, llmling_command
from tests.conftest import Systems

CONFIG = "name: same\nagents:\n  echo: {callback: 'cb:echo'}\n"


def llmling(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*llmling_command(), *args], capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL
    )


def send(system: SystemProcess, prompt: str) -> None:
    reply = system.request({"t": "send", "agent": "echo", "prompt": prompt}, timeout=60)
    assert reply["t"] == "result", reply


def test_same_name_in_two_folders_keeps_two_histories(
    systems: Systems, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared-state"
    monkeypatch.setenv("XDG_STATE_HOME", str(shared))
    env = {"XDG_STATE_HOME": str(shared)}
    first = systems.start(CONFIG, env=env)
    second = systems.start(CONFIG, env=env)
    send(first, "to the first")
    send(second, "to the second")
    assert first.stop() == 0 and second.stop() == 0

    folders = [default_state_dir("same", system.config.resolve()) for system in (first, second)]
    with_env = {**os.environ, "XDG_STATE_HOME": str(shared)}
    assert folders[0] != folders[1]
    for folder, system, prompt in zip(folders, (first, second), ("to the first", "to the second"), strict=True):
        assert folder.parent == shared / "llmling"
        assert folder.name == f"same-{path_key(system.config.resolve())}"
        with sqlite3.connect(folder / "history.db") as db:
            assert db.execute("SELECT prompt FROM runs").fetchall() == [(prompt,)]

    # No system runs: `history --config` reads that config's database directly.
    runtime = {**with_env, "XDG_RUNTIME_DIR": str(tmp_path / "no-runtime")}
    done = llmling("history", "echo", "--config", str(second.config), "--json", env=runtime)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["path"] == str(folders[1] / "history.db")
    assert [run["prompt"] for run in out["runs"]] == ["to the second"]
    assert out["runs"][0]["content"] == "echo: to the second"
    assert out["totals"]["runs"] == 1

    done = llmling("history", "echo", "--state-dir", str(folders[0]), env=runtime)
    assert done.returncode == 0, done.stderr
    assert "  > to the first" in done.stdout and "  < echo: to the first" in done.stdout

    # Without a hint, two histories of systems named `same` are ambiguous: a clear error, no guess.
    done = llmling("history", "echo", env=runtime)
    assert done.returncode == 1
    assert "no system is running and 2 folders in" in done.stderr and "--config" in done.stderr
    done = llmling("history", "nosuch", "--config", str(first.config), env=runtime)
    assert done.returncode == 1
    assert "unknown agent 'nosuch' (agents: echo)" in done.stderr


def test_offline_history_of_the_only_system(systems: Systems, tmp_path: Path) -> None:
    system = systems.start(CONFIG)
    send(system, "remember me")
    assert system.stop() == 0
    env = {**system.env, "XDG_RUNTIME_DIR": str(tmp_path / "no-runtime")}
    done = llmling("history", "echo", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert [run["prompt"] for run in json.loads(done.stdout)["runs"]] == ["remember me"]
    done = llmling("history", "echo", "--name", "other", env=env)
    assert done.returncode == 1 and "no run history of system 'other'" in done.stderr


def test_state_dir_still_overrides_and_legacy_folder_gets_a_note(
    systems: Systems, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "cfg" / "same.yml"
    config.parent.mkdir()
    config.write_text(CONFIG + "state_dir: here\n")
    assert load_config(config).state_path == config.parent / "here"
    shared = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(shared))
    legacy = shared / "llmling" / "same"
    legacy.mkdir(parents=True)
    sqlite3.connect(legacy / "history.db").close()
    system = systems.start(CONFIG, env={"XDG_STATE_HOME": str(shared)})
    assert system.stop() == 0
    log = system.log_text()
    assert f"the run history of systems named 'same' was kept in {legacy}" in log
    assert str(default_state_dir("same", system.config.resolve())) in log
