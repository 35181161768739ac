"""Restart intensity (as Erlang/OTP supervisors count it) and backoff with full jitter.

The first restart after a crash is immediate; each further one within `period` seconds waits a random time
in [0, min(cap, base * 2**n)] (n: the restarts before it in the window), so agents that crash together do not
come back in lockstep. A start that failed (the process never got READY: a broken import, a failed init) is
never retried at once: it waits `base` plus that random time. More than `max_restarts` restarts within
`period` seconds: give up.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable

BACKOFF_BASE = 0.25
BACKOFF_CAP = 30.0


class RestartIntensity:
    """Counts one agent's crashes in a sliding window and says how long to wait before the next start."""

    def __init__(
        self,
        max_restarts: int,
        period: float,
        base: float = BACKOFF_BASE,
        cap: float = BACKOFF_CAP,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.max_restarts = max_restarts
        self.period = period
        self._base = base
        self._cap = cap
        self._clock = clock
        self._jitter = jitter
        # Invariant: the times of the crashes within the last `period` seconds, oldest first.
        self._crashes: deque[float] = deque()

    @property
    def recent(self) -> int:
        """Crashes within the window (as of the last `crashed()`)."""
        return len(self._crashes)

    def crashed(self, start_failed: bool = False) -> float | None:
        """Record a crash (or a failed start); return the seconds to wait before the restart, or None to give
        up."""
        now = self._clock()
        while self._crashes and now - self._crashes[0] > self.period:
            self._crashes.popleft()
        self._crashes.append(now)
        before = len(self._crashes) - 1
        if before >= self.max_restarts:
            return None
        if start_failed:
            return self._base + self._jitter() * min(self._cap, self._base * 2**before)
        if before == 0:
            return 0.0
        return self._jitter() * min(self._cap, self._base * 2**before)

    def reset(self) -> None:
        self._crashes.clear()


__all__ = ["RestartIntensity"]
