"""`metrics: {port}`: the supervisor serves Prometheus' `/metrics` itself (when no dashboard does)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from llmling.config.observe import MetricsConfig
from llmling.errors import StartupError
from llmling.observe.metrics import CONTENT_TYPE, Metrics

if TYPE_CHECKING:
    from llmling.supervisor.system import Supervisor


class MetricsService:
    """`metrics: {port}`: the supervisor's events counted in memory, served as `/metrics` on host:port."""

    name = "metrics"

    def __init__(self, supervisor: Supervisor, config: MetricsConfig) -> None:
        self.config = config
        self.metrics = Metrics(supervisor.status)
        supervisor.add_listener(self.metrics.observe)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._scrape)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.config.host, self.config.port).start()
        except OSError as exc:
            await runner.cleanup()
            raise StartupError(f"metrics: cannot listen on {self.config.host}:{self.config.port}: {exc}") from None
        self._runner = runner

    async def _scrape(self, request: web.Request) -> web.Response:
        """The exposition, built now (the scrape's cost, never a run's)."""
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


__all__ = ["MetricsService"]
