"""`llmling up` in the foreground: run a Supervisor until SIGINT/SIGTERM or a `stop` request.

Signal handlers only request: the first SIGINT/SIGTERM starts a graceful shutdown, a second one skips the
drain. The exit status is 0 after a requested shutdown. Under systemd (`NOTIFY_SOCKET` set) it speaks the
notify protocol: READY=1, STATUS=, WATCHDOG=1 from this loop, STOPPING=1 (see `notify.py`).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from typing import Any

import uvloop

from llmling.config import SystemConfig
from llmling.errors import StartupInterrupted
from llmling.supervisor.notify import SystemdNotifier
from llmling.supervisor.spawner import stop_helpers
from llmling.supervisor.system import Supervisor

Message = dict[str, Any]
# `up --dashboard`: host, port, token (None: none, loopback only) and what to call with its URL once it listens.
DashboardOptions = tuple[str, int, str | None, Callable[[str], None]]


async def serve(
    config: SystemConfig,
    socket: str | os.PathLike[str] | None = None,
    on_event: Callable[[Message], None] | None = None,
    log_level: str = "INFO",
    dashboard: DashboardOptions | None = None,
) -> None:
    """Run the system until it is asked to stop (also while it starts). Raises StartupError when it cannot
    start. With `dashboard`, the web dashboard is served as one of its services."""
    notifier = SystemdNotifier.from_env()  # before the forkserver starts: no child inherits NOTIFY_SOCKET
    supervisor = Supervisor(config, socket=socket, on_event=on_event, log_level=log_level)
    if dashboard is not None:
        from llmling.supervisor.dashboard_service import DashboardService

        supervisor.services.append(DashboardService(supervisor, *dashboard))
    watchdog: asyncio.Task[None] | None = None
    if notifier is not None:
        supervisor.add_listener(notifier.on_event)
        # Owned here and ended below: it pings only while this loop runs, from start-up to the end.
        watchdog = asyncio.create_task(notifier.watchdog(), name="sd-watchdog")
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal() -> None:
        nonlocal signals_seen
        signals_seen += 1
        supervisor.request_stop(force=signals_seen > 1)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        try:
            await supervisor.start()
        except StartupInterrupted:
            return  # asked to stop while starting: a requested shutdown, not a failure
        await supervisor.wait_stopped()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if watchdog is not None:
            watchdog.cancel()
            await asyncio.wait({watchdog})
        if notifier is not None:
            notifier.close()


def run(config: SystemConfig, **kwargs: Any) -> None:
    try:
        uvloop.run(serve(config, **kwargs))
    finally:
        # Before this process exits: nothing of the system outlives it, not even briefly (under systemd,
        # `systemctl stop` would otherwise SIGKILL the forkserver and the resource tracker).
        stop_helpers()
