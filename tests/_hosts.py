"""Helpers of the across-hosts tests: `llmling host` in a subprocess, its processes, and their cleanup."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from llmling.ipc.client import Client
from llmling.testing import TAG_ENV, llmling_command, tagged_processes, wait_gone
from tests.conftest import short_tempdir

Body = dict[str, Any]


def agent_pids(status: Body, agent: str) -> list[int]:
    """The pids of `agent`'s processes in a status reply (a replica set lists them under `processes`)."""
    entry = next(item for item in status["agents"] if item["name"] == agent)
    items = entry.get("processes") or [entry]
    return [item["pid"] for item in items if item.get("pid") is not None]


def every_process_ready(status: Body) -> bool:
    return status.get("state") == "ready" and all(
        item.get("state") == "ready" for agent in status["agents"] for item in (agent.get("processes") or [agent])
    )


class HostProcess:
    """`llmling host --config CONFIG --name NAME --socket SOCKET [args]` in a subprocess (stderr to `log`).

    Its processes carry a tag of their own (found after re-parenting). `start()` returns once every process
    the host runs is READY (asked on the host's own socket)."""

    def __init__(self, config: Path, name: str, log: Path, args: tuple[str, ...] = (), env: Body | None = None):
        self.config, self.name, self.log, self.args = config, name, log, args
        self.socket = short_tempdir() / "h.sock"
        self.tag = uuid.uuid4().hex
        self.env = {key: value for key, value in os.environ.items() if key != "LLMLING_SOCKET"}
        self.env.update(env or {})
        self.env.update({TAG_ENV: self.tag, "XDG_STATE_HOME": str(config.parent / "state")})
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        base = [*llmling_command(), "host", "--config", str(self.config), "--name", self.name]
        return [*base, "--socket", str(self.socket), *self.args]

    def spawn(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.env
            )
        return self.process

    def start(self, timeout: float = 60.0) -> Body:
        process = self.spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"llmling host exited with {process.returncode}:\n{self.log_text()}")
            with contextlib.suppress(OSError):
                status = self.status()
                if every_process_ready(status):
                    return status
            time.sleep(0.05)
        raise RuntimeError(f"llmling host did not get ready within {timeout} s:\n{self.log_text()}")

    def status(self) -> Body:
        with Client(self.socket, 5.0) as client:
            return client.request({"t": "status"})

    def pids(self, agent: str) -> list[int]:
        return agent_pids(self.status(), agent)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the host and wait; returns its exit status (None when it had to be killed)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        return self.process.poll()

    def kill(self) -> None:
        """SIGKILL the host process only (its agents must end by themselves: parent-death signal)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def kill_all(self) -> None:
        for pid in tagged_processes(self.tag):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.kill()


class Hosts:
    """Starts hosts; at the end stops them all and checks that none left a process behind."""

    def __init__(self) -> None:
        self.made: list[HostProcess] = []

    def make(self, config: Path, name: str, *args: str, env: Body | None = None) -> HostProcess:
        host = HostProcess(config, name, config.parent / f"host-{name}-{len(self.made)}.log", args, env)
        self.made.append(host)
        return host

    def start(self, config: Path, name: str, *args: str, env: Body | None = None) -> HostProcess:
        host = self.make(config, name, *args, env=env)
        host.start()
        return host

    def close(self) -> list[str]:
        problems = []
        for host in self.made:
            host.stop()
            left = wait_gone(host.tag, 15.0)
            if left:
                host.kill_all()
                problems.append(f"host {host.name}: processes {left} survived it")
        return problems
