"""Replay protection for webhooks: delivery ids seen lately, each with the reply its first delivery got.

A sender that retries (GitHub's "Redeliver", a proxy's retry, an attacker replaying a captured request) sends
the same delivery id again; the trigger answers it with the first reply and starts no run. The store is an
interface (`DeliveryIds`) so a durable one (the run journal) can take the in-memory one's place.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

Reply = dict[str, Any]


class DeliveryIds(Protocol):
    """Delivery ids of one trigger and the reply each first got."""

    def get(self, key: str) -> Reply | None:
        """The first reply to delivery `key` if it was seen within the window, else None."""
        ...

    def put(self, key: str, reply: Reply) -> None:
        """Remember delivery `key` and its reply (from now)."""
        ...

    def discard(self, key: str) -> None:
        """Forget `key` (its delivery was refused after all, so a retry must run)."""
        ...


class MemoryDeliveryIds:
    """Delivery ids in memory, bounded by count (oldest forgotten first) and by age (`window` seconds).

    Invariant: `_seen` is ordered by the time each key was put, oldest first, so expiry and eviction both
    pop from the front.
    """

    __slots__ = ("_clock", "_max_ids", "_seen", "_window")

    def __init__(self, window: float, max_ids: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._window = window
        self._max_ids = max_ids
        self._clock = clock
        self._seen: OrderedDict[str, tuple[float, Reply]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def _expire(self) -> None:
        oldest = self._clock() - self._window
        seen = self._seen
        while seen and next(iter(seen.values()))[0] < oldest:
            seen.popitem(last=False)

    def get(self, key: str) -> Reply | None:
        self._expire()
        entry = self._seen.get(key)
        return None if entry is None else entry[1]

    def put(self, key: str, reply: Reply) -> None:
        self._expire()
        self._seen.pop(key, None)
        self._seen[key] = (self._clock(), reply)
        while len(self._seen) > self._max_ids:
            self._seen.popitem(last=False)

    def discard(self, key: str) -> None:
        self._seen.pop(key, None)


__all__ = ["DeliveryIds", "MemoryDeliveryIds", "Reply"]
