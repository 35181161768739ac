"""Build routes from the config's `connections:` entries."""

from __future__ import annotations

from llmling.config import ConnectionConfig
from llmling.errors import StartupError
from llmling.supervisor import conditions
from llmling.supervisor.router import Route


def route_from_config(source: str, connection: ConnectionConfig, base_dir: str) -> Route:
    """Raises StartupError naming the connection when a filter, transform or stop condition cannot be imported."""
    try:
        return _route(source, connection, base_dir)
    except (ImportError, AttributeError, TypeError) as exc:
        raise StartupError(
            f"agents.{source}.connections.{connection.name}: cannot import: {type(exc).__name__}: {exc}"
        ) from None


def _route(source: str, connection: ConnectionConfig, base_dir: str) -> Route:
    return Route(
        source=source,
        target=connection.name,
        wait_for_completion=connection.wait_for_completion,
        filter=conditions.predicate(connection.filter, base_dir),
        transform=conditions.transform(connection.transform, base_dir),
        stop_condition=conditions.predicate(connection.stop_condition, base_dir),
        from_config=True,
    )
