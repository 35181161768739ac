"""`llmling up` in the foreground: run a Supervisor until SIGINT/SIGTERM or a `stop` request.

Signal handlers only request: the first SIGINT/SIGTERM starts a graceful shutdown, a second one skips the
drain. The exit status is 0 after a requested shutdown.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from typing import Any

import uvloop

from llmling.config import SystemConfig
from llmling.supervisor.system import Supervisor

Message = dict[str, Any]


async def serve(
    config: SystemConfig,
    socket: str | os.PathLike[str] | None = None,
    on_event: Callable[[Message], None] | None = None,
    log_level: str = "INFO",
) -> None:
    """Run the system until it is asked to stop. Raises StartupError when it cannot start."""
    supervisor = Supervisor(config, socket=socket, on_event=on_event, log_level=log_level)
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal() -> None:
        nonlocal signals_seen
        signals_seen += 1
        supervisor.request_stop(force=signals_seen > 1)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        await supervisor.start()
        await supervisor.wait_stopped()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run(config: SystemConfig, **kwargs: Any) -> None:
    uvloop.run(serve(config, **kwargs))
