"""Helper processes of the supervisor (the telemetry worker, the `up --dashboard` child): how they start."""

from __future__ import annotations

import os


def prepare_helper(nice: int) -> None:
    """In the child before exec: die with the supervisor (parent-death signal), and run under SCHED_IDLE (else
    `nice`): the helper gets a core only when no process of the system wants it, and any of them that wakes up
    takes the core back at once. A run never waits for a span or a page; on a saturated machine the helpers
    lag instead (the event stream drops events for a slow dashboard, the telemetry worker's input is bounded)."""
    from llmling.agent_proc.death import die_with_parent

    die_with_parent()
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, or not allowed: a high niceness does most of it
        os.nice(nice)


__all__ = ["prepare_helper"]
