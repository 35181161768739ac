"""How a helper process of a system (the telemetry worker, the `up --dashboard` child) yields the CPU.

A helper calls `become_idle()` once its start-up is done (so starting it never waits on a busy machine): under
SCHED_IDLE it gets a core only when no process of the system wants one, and any of them that wakes up takes the
core back at once, so a run never waits for a span or a page. On a saturated machine the helper lags instead,
bounded by its input limits. `leave_idle()` (before a final export) works where the process may raise its
priority again (root, or RLIMIT_NICE), and is a no-op elsewhere.
"""

from __future__ import annotations

import contextlib
import os

# Set by the supervisor in a helper's environment: the helper calls become_idle() once it has started.
IDLE_ENV = "LLMLING_HELPER_IDLE"
# Where SCHED_IDLE is not available: the niceness taken instead.
FALLBACK_NICE = 19


def become_idle() -> None:
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        with contextlib.suppress(OSError):
            os.nice(FALLBACK_NICE)


def leave_idle() -> None:
    with contextlib.suppress(AttributeError, OSError):  # not permitted: the last export runs idle too
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


__all__ = ["IDLE_ENV", "become_idle", "leave_idle"]
