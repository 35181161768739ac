"""Fixtures: short socket paths, systems started with `llmling up` in a subprocess, and guards against hangs.

Async tests (`async def test_...`) run on a fresh uvloop loop, the loop llmling itself runs on, under a
deadline: a test that hangs fails instead of stalling the suite.
"""

from __future__ import annotations

import asyncio
import faulthandler
import inspect
import shutil
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from llmling.testing import ScriptedLLM, SystemProcess, wait_gone

# Seconds an async test may run before it fails.
ASYNC_TEST_TIMEOUT = 60.0
# Seconds any test may run before the whole run is ended with a traceback (the last line of defence).
HARD_TEST_TIMEOUT = 240

CALLBACKS = """
import asyncio
import os


def echo(prompt):
    return f"echo: {prompt}"


async def upper(prompt):
    return prompt.upper()


async def slow(prompt):
    await asyncio.sleep(float(os.environ.get("SLOW_SECONDS", "30")))
    return "late"


def boom(prompt):
    raise ValueError(f"boom on {prompt!r}")


def pid(prompt):
    return str(os.getpid())
"""


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    function = pyfuncitem.obj
    if not inspect.iscoroutinefunction(function):
        return None
    kwargs = {name: pyfuncitem.funcargs[name] for name in inspect.signature(function).parameters}
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(function(**kwargs), ASYNC_TEST_TIMEOUT))
    return True


@pytest.fixture(scope="module")
def llm() -> Iterator[ScriptedLLM]:
    """A scripted OpenAI-compatible server on its own thread, shared by the tests of one module."""
    with ScriptedLLM() as server:
        yield server


@pytest.fixture(autouse=True)
def _private_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process systems (AgentPool, Agent) keep their history and sockets in the test's own directories,
    never in the user's (where `llmling send` would find them)."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short_tempdir()))


@pytest.fixture(autouse=True)
def _hang_guard() -> Iterator[None]:
    faulthandler.dump_traceback_later(HARD_TEST_TIMEOUT, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


# Every directory short_tempdir() made; whatever is left of them is removed at the end of the session.
_short_dirs: list[Path] = []


def short_tempdir() -> Path:
    """A fresh directory under /tmp whose paths fit a Unix socket address (108 bytes); removed at the end of
    the session at the latest."""
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="ll-"))
    _short_dirs.append(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def _remove_short_dirs() -> Iterator[None]:
    yield
    for path in _short_dirs:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = short_tempdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sock_path(short_dir: Path) -> Path:
    return short_dir / "s.sock"


class Systems:
    """Writes configs and callback modules, starts systems, and ends them all, checking nothing survives.

    Every system gets its own folder for the config, the callbacks (`cb.py`, with CALLBACKS), its log and its
    state (XDG_STATE_HOME), and its own short folder for the socket (also its XDG_RUNTIME_DIR).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: list[SystemProcess] = []
        self._dirs: list[Path] = []

    def make(
        self, config: str, modules: dict[str, str] | None = None, env: dict[str, str] | None = None
    ) -> SystemProcess:
        folder = self.root / f"system{len(self.made)}"
        folder.mkdir(parents=True)
        (folder / "cb.py").write_text(CALLBACKS)
        for name, source in (modules or {}).items():
            (folder / f"{name}.py").write_text(textwrap.dedent(source))
        config_file = folder / "system.yml"
        config_file.write_text(textwrap.dedent(config))
        socket_dir = short_tempdir()
        self._dirs.append(socket_dir)
        # Nothing of the system outside the test's folders: its run history and its runtime dir are here.
        isolated = {"XDG_STATE_HOME": str(folder / "state"), "XDG_RUNTIME_DIR": str(socket_dir), **(env or {})}
        system = SystemProcess(config_file, socket_dir / "s.sock", folder / "up.log", isolated)
        self.made.append(system)
        return system

    def start(
        self,
        config: str,
        modules: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
        until: Callable[[dict[str, Any]], bool] | None = None,
    ) -> SystemProcess:
        """Make a system and start it; returns once `until(status)` holds (default: every agent is ready)."""
        system = self.make(config, modules, env)
        system.start(until=until)
        return system

    def close(self) -> list[str]:
        """End every system; return one line per system that left a process behind."""
        problems = []
        for system in self.made:
            system.stop()
            left = wait_gone(system.tag, 10.0)
            if left:
                system.kill()
                problems.append(f"{system.config}: processes {left} survived the system")
        for folder in self._dirs:
            shutil.rmtree(folder, ignore_errors=True)
        return problems


@pytest.fixture
def systems(tmp_path: Path) -> Iterator[Systems]:
    factory = Systems(tmp_path)
    yield factory
    problems = factory.close()
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def module_systems(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Systems]:
    factory = Systems(tmp_path_factory.mktemp("systems"))
    yield factory
    problems = factory.close()
    assert not problems, "\n".join(problems)
