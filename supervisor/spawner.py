"""Start agent processes from a forkserver that preloaded what they need.

The forkserver is a fresh interpreter started once per process (before the supervisor starts any thread);
it imports uvloop, pydantic and, when the config has LLM agents, litellm, then forks one child per agent. A
child is ready in milliseconds and shares the preloaded pages with its siblings.

Agent processes never run the user's `__main__`: the forkserver does not preload it, and the preparation data
each child receives names no main module (the standard library's would make every child re-import the main
script, or fail on `python -`, `python -c` and IPython files). An agent is built from import paths and its
spec alone, so any entry point works: scripts without a `__main__` guard, `python -`, IPython, Jupyter.

The forkserver and the resource tracker are started with the scrubbed base environment
(`supervisor.environment.base_environment`), so no secret of the supervisor's environment reaches them or,
through them, any agent; each agent gets its own environment in its spec. Both are stopped (and waited for)
before the supervisor's process exits: `stop_helpers()` at the end of `llmling up`, and at exit in library use.

Processes are started with the standard library's forkserver context, not aiomultiprocess: its `Process`
starts a Manager process that nothing stops when the supervisor is SIGKILLed, and that keeps the forkserver
alive too (measured, see docs/ARCHITECTURE.md, "Why not aiomultiprocess").
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import copyreg
import io
import multiprocessing
import multiprocessing.forkserver
import os
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import popen_forkserver, resource_tracker, spawn, util
from multiprocessing.context import ForkServerProcess, reduction, set_spawning_popen
from multiprocessing.process import BaseProcess
from typing import Any

from llmling.agent_proc.main import run as agent_entry
from llmling.agent_proc.spec import AgentSpec
from llmling.ipc.fdbudget import fd_budget
from llmling.supervisor.environment import base_environment

# The forkserver is one per process (the standard library's), shared by every system in it.
# Invariant: _users counts the started, not yet closed Spawners; _preloaded is what the running forkserver
# imported (None when none runs).
_users = 0
_preloaded: list[str] | None = None
# Held while the standard library may start the forkserver or the resource tracker with our environment.
_helper_start = threading.Lock()
_stop_at_exit_registered = False

# What a child's preparation data may carry. Left out: `init_main_from_name`/`init_main_from_path` (the child
# would import the user's main script again) and `sys_argv` (the user's arguments are not the agent's).
_PREPARATION_KEYS = (
    "name",
    "authkey",
    "log_to_stderr",
    "log_level",
    "sys_path",
    "dir",
    "orig_dir",
    "start_method",
)


def _forkserver_running() -> bool:
    return multiprocessing.forkserver._forkserver._forkserver_pid is not None


def _stop_forkserver() -> None:
    global _preloaded
    multiprocessing.forkserver._forkserver._stop()
    _preloaded = None


def stop_helpers() -> None:
    """Stop the forkserver and the resource tracker and wait for both, when no system of this process uses
    them. Called before the process exits, so neither outlives the supervisor (under systemd they would be
    left for `KillMode=` to SIGKILL)."""
    if _users:
        return
    if _forkserver_running():
        _stop_forkserver()
    resource_tracker._resource_tracker._stop()


def _spawnv_passfds(env: Mapping[str, str]) -> Any:
    """`multiprocessing.util.spawnv_passfds` with an explicit environment (the standard library's inherits
    this process's)."""
    import _posixsubprocess
    import subprocess

    env_list = [os.fsencode(key) + b"=" + os.fsencode(value) for key, value in env.items()]

    def spawnv_passfds(path: str, args: list[str], passfds: Any) -> int:
        passfds = tuple(sorted(map(int, passfds)))
        errpipe_read, errpipe_write = os.pipe()
        try:
            # The standard library's call (the same in Python 3.11 to 3.13), with `env_list` in place of None.
            return _posixsubprocess.fork_exec(  # type: ignore[no-any-return]
                args, [os.fsencode(path)], True, passfds, None, env_list,
                -1, -1, -1, -1, -1, -1, errpipe_read, errpipe_write,
                False, False, -1, None, None, None, -1, None,
                subprocess._USE_VFORK,  # type: ignore[attr-defined]
            )  # fmt: skip
        finally:
            os.close(errpipe_read)
            os.close(errpipe_write)

    return spawnv_passfds


@contextlib.contextmanager
def _helpers_environment() -> Iterator[None]:
    """While inside, the forkserver and the resource tracker start with the base environment only."""
    with _helper_start:
        original = util.spawnv_passfds
        util.spawnv_passfds = _spawnv_passfds(base_environment())
        try:
            yield
        finally:
            util.spawnv_passfds = original


def _ensure_forkserver() -> None:
    global _stop_at_exit_registered
    with _helpers_environment():
        multiprocessing.forkserver.ensure_running()
    if not _stop_at_exit_registered:
        # Library use: the forkserver serves every pool of this process and is stopped when it exits (after
        # the last pool), before the interpreter's own teardown. `llmling up` stops it earlier.
        atexit.register(stop_helpers)
        _stop_at_exit_registered = True


def preparation_data(name: str) -> dict[str, Any]:
    """What a new agent process gets before its process object: the standard library's data without the
    main module (so the child never imports the user's `__main__`) and without the user's argv."""
    data = spawn.get_preparation_data(name)
    return {key: data[key] for key in _PREPARATION_KEYS if key in data}


class _AgentPopen(popen_forkserver.Popen):
    """The standard library's forkserver Popen, with `preparation_data` instead of its own."""

    def _launch(self, process_obj: BaseProcess) -> None:
        prep_data = preparation_data(process_obj.name)
        buf = io.BytesIO()
        set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            set_spawning_popen(None)
        _ensure_forkserver()  # a forkserver that died is started again with the base environment too
        self.sentinel, w = multiprocessing.forkserver.connect_to_new_process(self._fds)
        # As the standard library: a duplicate of the data pipe's write end is the child's parent sentinel.
        _parent_w = os.dup(w)
        self.finalizer = util.Finalize(self, util.close_fds, (_parent_w, self.sentinel))
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = multiprocessing.forkserver.read_signed(self.sentinel)


class AgentProcess(ForkServerProcess):
    """A forkserver process started with `_AgentPopen`. The child receives a plain `ForkServerProcess`, so
    it imports nothing of the supervisor to unpickle it."""

    @staticmethod
    def _Popen(process_obj: BaseProcess) -> _AgentPopen:
        return _AgentPopen(process_obj)

    def __reduce__(self) -> tuple[Any, ...]:
        # What pickle's own reduce gives (protocols 0 and 1), with the standard library's class.
        return (copyreg._reconstructor, (ForkServerProcess, object, None), self.__dict__)  # type: ignore[attr-defined]


class Spawner:
    """Owns the forkserver preload list and starts agent processes.

    `Process.start()` blocks until the forkserver has finished its preload; it runs on one worker thread so
    the event loop keeps serving (progress, the model service) meanwhile. The forkserver itself is started
    synchronously from the calling thread by `start()`, before that worker thread exists.
    """

    def __init__(self, preload: list[str]) -> None:
        # Never "__main__": agents are built from import paths and their spec (see the module's docstring).
        self.preload = list(preload)
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
        _ensure_forkserver()
        _users += 1
        self._started = True

    async def spawn(self, spec: AgentSpec) -> BaseProcess:
        fd_budget().check_spawn()  # out of descriptors: fail this start (retried), never the forkserver
        process = AgentProcess(target=agent_entry, args=(spec,), name=f"llmling-agent-{spec.name}")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="llmling-spawn")
        await asyncio.get_running_loop().run_in_executor(self._executor, process.start)
        return process

    def close(self) -> None:
        """Release the forkserver. It stays up for the next system of this process (a warm start: litellm is
        not imported again) until `stop_helpers()` (the end of `llmling up`, or the process's exit); it is
        replaced when a system needs modules it lacks."""
        global _users
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        if self._started:
            self._started = False
            _users -= 1
