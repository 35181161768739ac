"""`llmling send`, `status`, `logs` and `stop` are light clients: they load click and the IPC client only."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import Systems

HEAVY = (
    "pydantic",
    "litellm",
    "mcp",
    "aiohttp",
    "yaml",
    "asyncio",
    "uvloop",
    "loguru",
    "llmling.supervisor",
    "nats",
)
PROBE = (
    "import atexit, sys\n"
    f"heavy = {HEAVY!r}\n"
    "atexit.register(lambda: sys.stderr.write('\\nLOADED ' + ','.join(sorted(m for m in sys.modules "
    "if m.startswith(heavy))) + '\\n'))\n"
    "from llmling.cli.main import main\n"
    "main(sys.argv[1:])\n"
)


def run_probe(*args: str) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
    )
    loaded = next(line for line in done.stderr.splitlines() if line.startswith("LOADED"))
    return done.returncode, done.stdout, loaded


@pytest.mark.parametrize("command", [["send", "echo", "hi"], ["status", "--json"], ["logs", "--json"], ["stop"]])
def test_client_commands_import_nothing_heavy(systems: Systems, command: list[str]) -> None:
    system = systems.start("agents:\n  echo: {callback: 'cb:echo'}\n")
    code, out, loaded = run_probe(*command, "--socket", str(system.socket))
    assert code == 0, out
    assert loaded == "LOADED ", f"`llmling {command[0]}` imported heavy modules: {loaded}"
    if command[0] == "send":
        assert out.strip() == "echo: hi"
