"""`llmling up --dashboard [HOST:]PORT`: the web dashboard, started and stopped with the system.

It is `llmling dashboard` in a child process, a client of this supervisor's control socket like any other:
the supervisor pays only for the event stream of one subscriber; the page, the API and the metrics are the
child's work, on another core. The token goes to it in its environment (`LLMLING_DASHBOARD_TOKEN`), never on
a command line. The child has a parent-death signal, and is stopped (SIGTERM, then SIGKILL) first at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from loguru import logger

from llmling.dashboard import TOKEN_ENV
from llmling.errors import StartupError
from llmling.supervisor.environment import base_environment
from llmling.supervisor.helpers import IDLE_ENV, prepare_helper

if TYPE_CHECKING:
    from llmling.supervisor.system import Supervisor

URL_LINE = re.compile(rb"^dashboard: (http://\S+)")
# Seconds the child gets to listen, and to stop before it is killed.
START_TIMEOUT = 60.0
STOP_GRACE = 5.0


class DashboardService:
    name = "dashboard"

    def __init__(
        self, supervisor: Supervisor, host: str, port: int, token: str | None, on_listening: Callable[[str], None]
    ) -> None:
        self.socket_path = str(supervisor.socket_path)
        self.host, self.port, self.token = host, port, token
        self._spawn = supervisor.spawn_service_task
        self._on_listening = on_listening
        self.log = logger.bind(agent="dashboard")
        self._process: asyncio.subprocess.Process | None = None
        self._relay: asyncio.Task[Any] | None = None

    async def start(self) -> None:
        command = [sys.executable, "-m", "llmling.cli.main", "dashboard", "--socket", self.socket_path]
        command += ["--host", self.host, "--port", str(self.port)]
        env = base_environment() | {IDLE_ENV: "1"}
        if self.token is None:
            command.append("--no-token")
        else:
            env[TOKEN_ENV] = self.token
        process = self._process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=prepare_helper,
            env=env,
        )
        assert process.stderr is not None
        try:
            await self._wait_listening(process)
        except BaseException:
            await self._end(process)
            raise
        self._relay = self._spawn(self._relay_output(process), name="dashboard-output")

    async def _wait_listening(self, process: asyncio.subprocess.Process) -> None:
        """Until the child prints its URL (handed to `on_listening`). Raises StartupError."""
        assert process.stderr is not None
        where = f"{self.host}:{self.port}"
        try:
            async with asyncio.timeout(START_TIMEOUT):
                while True:
                    line = await process.stderr.readline()
                    if not line:
                        raise StartupError(f"dashboard on {where} exited with status {await process.wait()}")
                    if found := URL_LINE.match(line):
                        self._on_listening(found.group(1).decode())
                        return
                    _relay_line(line)
        except TimeoutError:
            raise StartupError(f"dashboard on {where} not listening after {START_TIMEOUT} s") from None

    async def _relay_output(self, process: asyncio.subprocess.Process) -> None:
        """The child's later lines (its warnings) go to our stderr, until it exits."""
        assert process.stderr is not None
        while line := await process.stderr.readline():
            _relay_line(line)
        code = await process.wait()
        if self._process is process:
            self.log.warning("the dashboard exited with status {}", code)

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            await self._end(process)
        if self._relay is not None:
            self._relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._relay

    async def _end(self, process: asyncio.subprocess.Process) -> None:
        if process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), STOP_GRACE)
        except TimeoutError:
            process.kill()
            await process.wait()


def _relay_line(line: bytes) -> None:
    with contextlib.suppress(OSError):
        sys.stderr.buffer.write(line)
        sys.stderr.flush()


__all__ = ["DashboardService"]
