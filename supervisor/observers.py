"""The services that show the system outside, each only when its config key is set: Prometheus' `/metrics`
(`metrics:`) and OpenTelemetry spans (`telemetry:`, made in a worker process). Imported only then."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmling.supervisor.system import Supervisor


def add_observers(supervisor: Supervisor) -> None:
    """Register the metrics and telemetry services the config asks for (called once, before the start)."""
    config = supervisor.config
    if config.metrics is not None:
        from llmling.supervisor.metrics_service import MetricsService

        supervisor.services.append(MetricsService(supervisor, config.metrics))
    if config.telemetry is not None:
        from llmling.supervisor.telemetry_service import TelemetryService

        supervisor.late_services.append(TelemetryService(supervisor, config.telemetry))  # spans of drained runs


__all__ = ["add_observers"]
