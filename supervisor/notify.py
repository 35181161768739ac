"""systemd's notify protocol (sd_notify) for `llmling up` under a `Type=notify` unit.

When `NOTIFY_SOCKET` is set (a datagram Unix socket; a leading `@` means the abstract namespace), the
supervisor sends `READY=1` once its agents are READY, `STATUS=` lines with the agents' counts, `WATCHDOG=1`
at half of `WATCHDOG_USEC` from a task on its own event loop (so a blocked loop stops the pings and systemd
restarts the service) and `STOPPING=1` when shutdown begins. Reload does not exist, so `RELOADING=1` is
never sent. The variables are removed from the environment, so no child process inherits them.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

from loguru import logger

Message = dict[str, Any]
ENV_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def _address(value: str) -> str:
    return "\0" + value[1:] if value.startswith("@") else value


class SystemdNotifier:
    """Sends notify datagrams; never raises (a notify failure must not stop the system)."""

    def __init__(self, address: str, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_interval = watchdog_usec / 2e6 if watchdog_usec else None
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._states: dict[str, str] = {}
        self._ready = False
        self._stopping = False
        self._failed_once = False
        self.log = logger.bind(agent="supervisor")

    @classmethod
    def from_env(cls, environ: os._Environ[str] | dict[str, str] | None = None) -> SystemdNotifier | None:
        """A notifier when NOTIFY_SOCKET is set, else None. Removes the notify variables from `environ`."""
        env = os.environ if environ is None else environ
        values = {name: env.pop(name, None) for name in ENV_VARS}
        address = values["NOTIFY_SOCKET"]
        if not address:
            return None
        usec: int | None = None
        watchdog_pid = values["WATCHDOG_PID"]
        if values["WATCHDOG_USEC"] and (not watchdog_pid or watchdog_pid == str(os.getpid())):
            try:
                usec = int(values["WATCHDOG_USEC"] or "")
            except ValueError:
                usec = None
        if address.startswith("@") or address.startswith("/"):
            return cls(_address(address), usec if usec and usec > 0 else None)
        logger.bind(agent="supervisor").warning("NOTIFY_SOCKET={!r} is not a socket path; ignored", address)
        return None

    def notify(self, *lines: str) -> None:
        try:
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            if not self._failed_once:
                self._failed_once = True
                self.log.warning("sd_notify to {!r} failed: {}", self.address, exc)

    def close(self) -> None:
        self._sock.close()

    # -- fed by the supervisor's events ---------------------------------------------------------------------
    def on_event(self, event: Message) -> None:
        kind = event.get("event")
        if kind == "agent_state":
            self._states[str(event.get("agent"))] = str(event.get("state"))
            if not self._stopping:
                self.notify(f"STATUS={self.status()}")
        elif kind == "system_ready":
            self._ready = True
            self.notify("READY=1", f"STATUS={self.status()}", f"MAINPID={os.getpid()}")
        elif kind == "system_stopping":
            self._stopping = True
            self.notify("STOPPING=1", "STATUS=stopping: draining runs")

    def status(self) -> str:
        counts: dict[str, int] = {}
        for state in self._states.values():
            counts[state] = counts.get(state, 0) + 1
        ready = counts.pop("ready", 0)
        total = len(self._states)
        rest = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        head = "running" if self._ready else "starting"
        return f"{head}: {ready}/{total} agents ready" + (f" ({rest})" if rest else "")

    async def watchdog(self) -> None:
        """Ping systemd at half the watchdog period, from this event loop, until cancelled."""
        if self.watchdog_interval is None:
            return
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_interval)


__all__ = ["SystemdNotifier"]
