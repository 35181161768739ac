"""Start agent processes from a forkserver that preloaded what they need.

The forkserver is a fresh interpreter started once per process (before the supervisor starts any thread);
it imports uvloop, pydantic and, when the config has LLM agents, litellm, then forks one child per agent. A
child is ready in milliseconds and shares the preloaded pages with its siblings.

Processes are started with the standard library's forkserver context, not aiomultiprocess: its `Process`
starts a Manager process that nothing stops when the supervisor is SIGKILLed, and that keeps the forkserver
alive too (measured, see docs/ARCHITECTURE.md, "Why not aiomultiprocess").
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.forkserver
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.process import BaseProcess

from llmling.agent_proc.main import run as agent_entry
from llmling.agent_proc.spec import AgentSpec
from llmling.ipc.fdbudget import fd_budget

# The forkserver is one per process (the standard library's), shared by every system in it.
# Invariant: _users counts the started, not yet closed Spawners; _preloaded is what the running forkserver
# imported (None when none runs).
_users = 0
_preloaded: list[str] | None = None


def _forkserver_running() -> bool:
    return multiprocessing.forkserver._forkserver._forkserver_pid is not None


def _stop_forkserver() -> None:
    global _preloaded
    multiprocessing.forkserver._forkserver._stop()
    _preloaded = None


class Spawner:
    """Owns the forkserver preload list and starts agent processes.

    `Process.start()` blocks until the forkserver has finished its preload; it runs on one worker thread so
    the event loop keeps serving (progress, the model service) meanwhile. The forkserver itself is started
    synchronously from the calling thread by `start()`, before that worker thread exists.
    """

    def __init__(self, preload: list[str]) -> None:
        # "__main__" first: the forkserver imports the main script once, so children need not re-run it.
        self.preload = ["__main__", *preload]
        self._context = multiprocessing.get_context("forkserver")
        self._executor: ThreadPoolExecutor | None = None
        self._started = False

    def start(self) -> None:
        """Make sure a forkserver with (at least) our preload runs. A running one that lacks modules we need
        is replaced when no other system uses it; otherwise our agents import what is missing themselves."""
        global _users, _preloaded
        lacking = _preloaded is not None and not set(self.preload) <= set(_preloaded)
        if lacking and _users == 0 and _forkserver_running():
            _stop_forkserver()
        if not _forkserver_running():
            self._context.set_forkserver_preload(self.preload)
            _preloaded = list(self.preload)
        multiprocessing.forkserver.ensure_running()
        _users += 1
        self._started = True

    async def spawn(self, spec: AgentSpec) -> BaseProcess:
        fd_budget().check_spawn()  # out of descriptors: fail this start (retried), never the forkserver
        process = self._context.Process(target=agent_entry, args=(spec,), name=f"llmling-agent-{spec.name}")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="llmling-spawn")
        await asyncio.get_running_loop().run_in_executor(self._executor, process.start)
        return process

    def close(self) -> None:
        """Release the forkserver. It stays up for the next system of this process (a warm start: litellm is
        not imported again) and ends with the process; it is replaced when a system needs modules it lacks."""
        global _users
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        if self._started:
            self._started = False
            _users -= 1
