"""Helpers of the slot tests (admission, restarts, floods): configs for in-process pools, waits on counts."""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmling.testing import SystemProcess


def pool_config(tmp_path: Path, modules: dict[str, str], agents: str, **top: Any) -> Path:
    """Write the callback `modules` and a config (top-level keys `top`, the `agents` block) in `tmp_path`."""
    for name, source in modules.items():
        (tmp_path / f"{name}.py").write_text(source)
    head = "".join(f"{key}: {value}\n" for key, value in top.items())
    path = tmp_path / "system.yml"
    path.write_text(head + "agents:\n" + textwrap.indent(textwrap.dedent(agents), "  "))
    return path


async def until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait (on the test's own loop) until `condition()` holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)


async def cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks)


def agent(system: SystemProcess, name: str) -> dict[str, Any]:
    """One agent's entry of a running system's status."""
    return next(item for item in system.status()["agents"] if item["name"] == name)
