"""What a supervisor service is: something started once every agent is READY and stopped before the drain (a
late service, `Supervisor.late_services`: after the agents stopped).

Triggers, background timers and the history writer are services. A service's long-lived tasks are created
with `Supervisor.spawn_service_task`, so the root TaskGroup owns them; `stop()` must make them end.
"""

from __future__ import annotations

from typing import Protocol


class Service(Protocol):
    name: str

    async def start(self) -> None:
        """Start; raise StartupError (naming the service) to fail the system's start."""

    async def stop(self) -> None:
        """Stop accepting work and end the tasks this service started. Must not raise."""
