"""Helpers shared by the automation tests (triggers, background runs, watch, shutdown, systemd)."""

from __future__ import annotations

import json
import socket
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# Callbacks that append what they receive to got.jsonl beside them, so a test sees every run an agent got.
RECORDER = """
import asyncio
import json
import os
import time

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "got.jsonl")


def _write(item):
    with open(OUT, "a") as out:
        out.write(json.dumps(item) + "\\n")


def record(prompt):
    _write({"prompt": prompt, "t": time.time()})
    return f"got: {prompt}"


async def slow(prompt):
    start = time.time()
    await asyncio.sleep(float(os.environ.get("REC_SLOW", "1.0")))
    _write({"prompt": prompt, "start": start, "end": time.time()})
    return f"slow: {prompt}"


def boom(prompt):
    raise ValueError("boom")
"""


def got(folder: Path) -> list[dict[str, Any]]:
    """Every call the recorder callbacks in `folder` saw, oldest first."""
    path = folder / "got.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_until(check: Callable[[], T], timeout: float = 20.0, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_listening(port: int, host: str = "127.0.0.1", timeout: float = 20.0) -> None:
    """Wait until `host:port` accepts connections: a system's webhook servers start after its agents are ready,
    so a status that shows every agent ready does not mean they listen yet."""

    def accepts() -> bool:
        try:
            socket.create_connection((host, port), timeout=1.0).close()
        except OSError:
            return False
        return True

    wait_until(accepts, timeout, what=f"a listener on {host}:{port}")


def write_system(folder: Path, config: str) -> Path:
    """A config file and the recorder module (rec.py) in `folder`; returns the config's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rec.py").write_text(RECORDER)
    path = folder / "system.yml"
    path.write_text(textwrap.dedent(config))
    return path
