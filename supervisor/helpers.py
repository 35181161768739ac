"""Helper processes of the supervisor (the telemetry worker, the `up --dashboard` child): how they start."""

from __future__ import annotations

import os


def prepare_helper(nice: int) -> None:
    """In the child before exec: die with the supervisor (parent-death signal), and take `nice` so that on a
    saturated machine the system's own processes come first."""
    from llmling.agent_proc.death import die_with_parent

    die_with_parent()
    os.nice(nice)


__all__ = ["prepare_helper"]
