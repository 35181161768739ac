"""A clean stop leaves nothing behind, not even briefly: the forkserver and the resource tracker are stopped
(and reaped) before the supervisor's process exits, under `llmling up` and in library use.

Under systemd, a process of the unit still alive when the main process exits is SIGKILLed by `systemctl stop`;
so the check is made the moment the supervisor's process has exited, with no grace period.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from llmling.testing import TAG_ENV, tagged_processes
from tests.conftest import Systems

CONFIG = """
agents:
  one:
    callback: cb:echo
  two:
    callback: cb:upper
"""


def roles(pids: list[int]) -> list[str]:
    names = []
    for pid in pids:
        try:
            names.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120])
        except OSError:
            names.append(f"{pid} (gone)")
    return names


def test_nothing_outlives_llmling_up_after_sigterm(systems: Systems) -> None:
    system = systems.start(CONFIG)
    running = system.processes()
    commands = " | ".join(roles(running))
    # The supervisor, the forkserver, the resource tracker and the two agents carry the system's tag.
    assert len(running) >= 5, commands
    assert "forkserver" in commands and "resource_tracker" in commands, commands
    assert system.process is not None
    system.process.send_signal(signal.SIGTERM)
    assert system.process.wait(60) == 0
    left = system.processes()
    assert left == [], f"outlived `llmling up`: {roles(left)}"


PROGRAM = """
import asyncio
from llmling import AgentPool

async def main():
    async with AgentPool({"agents": {"a": {"callback": "cb:echo"}, "b": {"callback": "cb:echo"}}}) as pool:
        print((await pool.get_agent("a").run("hi")).content)

asyncio.run(main())
"""


def test_nothing_outlives_a_library_program(tmp_path: Path) -> None:
    (tmp_path / "cb.py").write_text("def echo(prompt):\n    return f'echo: {prompt}'\n")
    tag = uuid.uuid4().hex
    env = {
        **os.environ,
        TAG_ENV: tag,
        "XDG_RUNTIME_DIR": str(tmp_path),
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "echo: hi" in done.stdout, done.stderr
    left = tagged_processes(tag)
    assert left == [], f"outlived the program: {roles(left)}"
