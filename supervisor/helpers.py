"""Helper processes of the supervisor (the telemetry worker, the `up --dashboard` child): how they start."""

from __future__ import annotations

from llmling.observe.scheduling import IDLE_ENV


def prepare_helper() -> None:
    """In the child before exec: die with the supervisor (parent-death signal)."""
    from llmling.agent_proc.death import die_with_parent

    die_with_parent()


__all__ = ["IDLE_ENV", "prepare_helper"]
