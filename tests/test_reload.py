"""Reload: `llmling reload`, SIGHUP and `up --reload` apply a changed config to a running system."""

from __future__ import annotations

import signal
import subprocess
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llmling.config import parse_config
from llmling.supervisor.reload import ReloadError, plan_reload
from llmling.testing import llmling_command

BASE = """
agents:
  analyzer:
    callback: cb:echo
    connections: [summarizer]
  summarizer:
    callback: cb:upper
  steady:
    callback: cb:pid
"""

CHANGED = """
agents:
  analyzer:
    callback: cb:upper
    connections: [reporter]
  reporter:
    callback: cb:echo
  steady:
    callback: cb:pid
"""


def config(text: str) -> Any:
    return parse_config(textwrap.dedent(text), "agents.yml", default_name="agents")


def wait_until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.05)


def agents(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {agent["name"]: agent for agent in status["agents"]}


# -- the plan -------------------------------------------------------------------------------------------------
def test_plan_names_every_difference() -> None:
    plan = plan_reload(config(BASE), config(CHANGED))
    assert plan.added == ("reporter",)
    assert plan.removed == ("summarizer",)
    assert plan.changed == ("analyzer",)  # its callback; `steady` is unchanged
    assert plan.routes == ("analyzer",)
    assert "added reporter" in plan.summary() and "restarted analyzer" in plan.summary()
    assert plan_reload(config(BASE), config(BASE)).empty


def test_plan_routes_triggers_background_in_place() -> None:
    changed = BASE.replace(
        "    callback: cb:pid\n",
        "    callback: cb:pid\n    background: {prompt: tick, interval: 60}\n"
        "    triggers: [{type: time, name: hourly, interval_s: 3600, prompt: hi}]\n",
    )
    plan = plan_reload(config(BASE), config(changed))
    assert plan.changed == () and plan.background == ("steady",) and plan.trigger_kinds == ("time",)


def test_plan_refuses_a_key_that_needs_a_restart() -> None:
    with pytest.raises(ReloadError, match="'name' changed"):
        plan_reload(config(BASE), config("name: other\n" + BASE))


def test_plan_refuses_a_changed_placement() -> None:
    nats = "transport: {nats: {url: 'nats://127.0.0.1:4222'}}\n"
    before = config(nats + BASE)
    after = config(nats + BASE.replace("    callback: cb:pid", "    callback: cb:pid\n    placement: any"))
    with pytest.raises(ReloadError, match=r"agents\.steady\.placement changed \('local' → 'any'\)"):
        plan_reload(before, after)


# -- a running system -----------------------------------------------------------------------------------------
def test_reload_applies_the_difference(systems) -> None:  # type: ignore[no-untyped-def]
    system = systems.start(BASE)
    before = agents(system.status())
    steady_pid = system.cli("send", "steady", "x").stdout.strip()

    system.config.write_text(textwrap.dedent(CHANGED))
    result = system.cli("reload")
    assert result.returncode == 0, result.stderr
    assert "added reporter" in result.stdout and "removed summarizer" in result.stdout

    wait_until(lambda: agents(system.status()).get("reporter", {}).get("state") == "ready")
    after = agents(system.status())
    assert set(after) == {"analyzer", "reporter", "steady"}
    # The unchanged agent kept its process; the changed one has a fresh one with the new callback.
    assert after["steady"]["pid"] == before["steady"]["pid"] == int(steady_pid)
    assert after["analyzer"]["pid"] != before["analyzer"]["pid"]
    sent = system.cli("send", "--wait", "--json", "analyzer", "hi")
    assert sent.returncode == 0, sent.stderr
    assert '"content": "HI"' in sent.stdout and '"agent": "reporter"' in sent.stdout
    assert "summarizer" not in sent.stdout
    gone = system.cli("send", "summarizer", "x")
    assert gone.returncode != 0 and "summarizer" in gone.stderr


def test_invalid_config_changes_nothing(systems) -> None:  # type: ignore[no-untyped-def]
    system = systems.start(BASE)
    before = agents(system.status())
    system.config.write_text(textwrap.dedent(BASE).replace("cb:upper", "cb:upper\n    bogus: 1"))
    result = system.cli("reload")
    assert result.returncode == 1
    assert "system.yml:" in result.stderr and "nothing was changed" in result.stderr
    assert "Traceback" not in result.stderr
    assert agents(system.status()) == before

    system.config.write_text("name: renamed\n" + textwrap.dedent(BASE))
    result = system.cli("reload")
    assert result.returncode == 1 and "'name' changed" in result.stderr
    assert system.cli("send", "analyzer", "still").stdout.strip() == "echo: still"


def test_sighup_reloads(systems) -> None:  # type: ignore[no-untyped-def]
    system = systems.start(BASE)
    system.config.write_text(textwrap.dedent(BASE).replace("cb:echo", "cb:upper"))
    system.process.send_signal(signal.SIGHUP)
    wait_until(lambda: system.cli("send", "analyzer", "hup").stdout.strip() == "HUP")
    assert system.process.poll() is None


def test_up_reload_watches_the_file(systems) -> None:  # type: ignore[no-untyped-def]
    system = systems.make(BASE)
    system.args = ("--reload",)
    system.start()
    path: Path = system.config
    path.write_text(textwrap.dedent(BASE).replace("cb:echo", "cb:upper"))
    wait_until(lambda: system.cli("send", "analyzer", "saved").stdout.strip() == "SAVED")
    assert "reloaded:" in system.log_text()


def test_changed_agent_finishes_its_run_in_flight(systems) -> None:  # type: ignore[no-untyped-def]
    slow = BASE.replace("cb:upper", "cb:slow\n    env_passthrough: [SLOW_SECONDS]")
    system = systems.start(slow, env={"SLOW_SECONDS": "2"})
    waiting = subprocess.Popen(
        [*llmling_command(), "send", "--socket", str(system.socket), "summarizer", "work"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=system.env,
    )
    # In the old process (its frame written to it), not only accepted: one accepted before the reload would be
    # the new process's to run.
    wait_until(lambda: any(a["name"] == "summarizer" and a.get("running") for a in system.status()["agents"]))
    system.config.write_text(textwrap.dedent(slow).replace("cb:slow", "cb:echo"))
    assert system.cli("reload").returncode == 0
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0 and out.strip() == "late", err  # finished by the old process
    assert system.cli("send", "summarizer", "next").stdout.strip() == "echo: next"
