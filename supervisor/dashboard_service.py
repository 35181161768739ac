"""`llmling up --dashboard [HOST:]PORT`: the web dashboard as a service of the supervisor.

It is the same client as `llmling dashboard` (it subscribes to this supervisor's control socket like any
client, so both paths show the same), run in the supervisor's loop with its tasks owned by the root group:
started after every agent is READY, stopped first at shutdown.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from llmling.dashboard.app import Dashboard
from llmling.errors import StartupError

if TYPE_CHECKING:
    from llmling.supervisor.system import Supervisor


class DashboardService:
    name = "dashboard"

    def __init__(
        self, supervisor: Supervisor, host: str, port: int, token: str | None, on_listening: Callable[[str], None]
    ) -> None:
        self.dashboard = Dashboard(str(supervisor.socket_path), host, port, token)  # UnsafeBind: refused here
        self._spawn = supervisor.spawn_service_task
        self._on_listening = on_listening

    async def start(self) -> None:
        try:
            await self.dashboard.start(self._spawn)
        except OSError as exc:
            where = f"{self.dashboard.host}:{self.dashboard.port}"
            raise StartupError(f"dashboard: cannot listen on {where}: {exc.strerror or exc}") from None
        self._on_listening(self.dashboard.url)

    async def stop(self) -> None:
        await self.dashboard.stop()


__all__ = ["DashboardService"]
