"""Watch a child's exit without polling: the multiprocessing sentinel becomes readable when it ends."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from multiprocessing.process import BaseProcess

from loguru import logger


class Child:
    """One started agent process and the single watcher of its exit.

    Invariant: at most one reader is registered on the sentinel (an fd has one reader per loop), so every
    waiter shares `exited`.
    """

    def __init__(self, process: BaseProcess) -> None:
        self.process = process
        self.pid = process.pid
        loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[int | None] = loop.create_future()
        self._fd = process.sentinel
        loop.add_reader(self._fd, self._on_readable)

    def _on_readable(self) -> None:
        asyncio.get_running_loop().remove_reader(self._fd)
        self.process.join(0)
        if not self.exited.done():
            self.exited.set_result(self.process.exitcode)

    @property
    def alive(self) -> bool:
        return not self.exited.done()

    async def wait(self) -> int | None:
        return await asyncio.shield(self.exited)

    def kill(self) -> None:
        """SIGKILL now (a blocked or hung process); its exit is seen on the sentinel as usual."""
        if self.alive and self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    async def end(self, grace: float, name: str) -> None:
        """Escalate: wait `grace` seconds for a clean exit, then SIGTERM, then SIGKILL (with a warning)."""
        for sig, wait in ((None, grace), (signal.SIGTERM, 1.0), (signal.SIGKILL, 5.0)):
            if not self.alive:
                return
            if sig is not None and self.pid is not None:
                if sig == signal.SIGKILL:
                    logger.bind(agent=name).warning("process {} did not stop; killing it", self.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, sig)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wait(), wait)
