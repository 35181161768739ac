"""`llmling up` in the foreground: run a Supervisor until SIGINT/SIGTERM or a `stop` request.

Signal handlers only request: the first SIGINT/SIGTERM starts a graceful shutdown, a second one skips the
drain; SIGHUP reloads the config file (as `llmling reload` does); with `watch_config` a change of the file
reloads it too (debounced). `serve` returns the count of accepted runs the drain could not finish (they stay
in the journal). Under systemd (`NOTIFY_SOCKET` set) it speaks the notify protocol: READY=1, STATUS=,
WATCHDOG=1 from this loop, STOPPING=1 (see `notify.py`).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path
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
    watch_config: bool = False,
    dashboard: DashboardOptions | None = None,
) -> int:
    """Run the system until it is asked to stop (also while it starts). Raises StartupError when it cannot
    start. Returns how many accepted runs were left without an outcome (kept in the journal, or lost with
    durability off). With `dashboard`, the web dashboard is served as one of its services."""
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
    stop_on_signals(loop, supervisor.request_stop)
    loop.add_signal_handler(signal.SIGHUP, supervisor.request_reload)
    watcher: asyncio.Task[None] | None = None
    loaded = _mtime(config.source) if watch_config and config.source is not None else None
    try:
        try:
            await supervisor.start()
        except StartupInterrupted:
            return 0  # asked to stop while starting: a requested shutdown, not a failure
        if watch_config and config.source is not None:
            # Owned here and ended below, like the watchdog.
            watcher = asyncio.create_task(_watch_config(config.source, supervisor, loaded), name="config-watch")
        await supervisor.wait_stopped()
        return supervisor.left
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        for task in (watchdog, watcher):
            if task is not None:
                task.cancel()
                await asyncio.wait({task})
        if notifier is not None:
            notifier.close()


def stop_on_signals(loop: asyncio.AbstractEventLoop, request_stop: Callable[[bool], None]) -> None:
    """SIGINT/SIGTERM only request: the first a graceful stop, a second one `force` (the caller removes the
    handlers when it ends)."""
    seen = 0

    def on_signal() -> None:
        nonlocal seen
        seen += 1
        request_stop(seen > 1)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)


# Milliseconds without a further change before a saved config is reloaded (an editor writes in bursts).
RELOAD_DEBOUNCE_MS = 300


async def _watch_config(path: Path, supervisor: Supervisor, loaded: int | None) -> None:
    """Reload the system whenever the config file changes (`up --reload`). `loaded` is the file's mtime (ns)
    when it was read: a save between that and the moment the watcher runs is caught by it."""
    from watchfiles import awatch

    watching = False
    # `path` is absolute (the loader resolved it). The folder, not the file: editors replace the file (a new
    # inode) when they save. `yield_on_timeout`: an empty batch tells when the watcher is running.
    async for changes in awatch(
        path.parent, debounce=RELOAD_DEBOUNCE_MS, recursive=False, yield_on_timeout=True, rust_timeout=1000
    ):
        changed = any(os.path.basename(changed) == path.name for _, changed in changes)
        if not watching:
            watching = True
            changed = changed or _mtime(path) != loaded
        if changed:
            supervisor.log.info("{} changed; reloading", path.name)
            supervisor.request_reload()


def _mtime(path: Path) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def run(config: SystemConfig, **kwargs: Any) -> int:
    """`serve` on a uvloop loop; returns the accepted runs left without an outcome."""
    try:
        return uvloop.run(serve(config, **kwargs))
    finally:
        # Before this process exits: nothing of the system outlives it, not even briefly (under systemd,
        # `systemctl stop` would otherwise SIGKILL the forkserver and the resource tracker).
        stop_helpers()
