"""Cron schedules of time triggers: `croniter` parses and matches, this module maps wall-clock times to instants.

An expression has five fields (`minute hour day-of-month month day-of-week`, with croniter's syntax: `*`,
values, ranges, steps, lists, English names, `@hourly`/`@daily`/... macros; when both day fields are restricted a
day matches when either does, as in Vixie cron). It is matched against the wall clock of a time zone: an IANA
name (`Europe/Berlin`, via zoneinfo) or, by default, the machine's local time.

Daylight saving time changes neither skip nor double a run:
- a wall-clock time the clock jumps over (spring forward: 02:30 in Berlin on 2026-03-29) fires when the clock
  has moved past it, at the same offset after the jump (03:30 CEST), once;
- a wall-clock time the clock shows twice (fall back: 02:30 on 2026-10-25) fires at its first occurrence only.
The schedule is walked in wall-clock time (croniter on naive datetimes) and each match is mapped to an instant
with `fold=0`; the next match is searched after the later of the last match and the wall clock of "now", so a
repeated hour never matches again.

croniter is imported on first use: loading a config that has no cron trigger never imports it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, tzinfo
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# How many years ahead a match is searched for before an expression is said never to match (`0 0 30 2 *`).
_HORIZON_YEARS = 5


class CronError(ValueError):
    """The expression (or the time zone) is not valid; the message says why."""


def zone(name: str | None) -> tzinfo | None:
    """The zone of an IANA name; None for the machine's local time. Raises CronError for an unknown name."""
    if name is None:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(f"unknown time zone {name!r} (an IANA name such as 'Europe/Berlin' or 'UTC')") from None


@cache
def _croniter() -> Any:
    import croniter

    return croniter


def _matcher(text: str, start: datetime) -> Any:
    module = _croniter()
    if len(text.split()) != 5 and not text.strip().startswith("@"):
        raise CronError(f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(text.split())}")
    try:
        return module.croniter(text, start, max_years_between_matches=_HORIZON_YEARS)
    except module.CroniterError as exc:
        raise CronError(str(exc) or type(exc).__name__) from None


@dataclass(frozen=True, slots=True)
class CronSchedule:
    """A five-field expression in a zone (None: local time). `next_after(ts)` gives the next fire instant."""

    text: str
    tz: tzinfo | None = None

    @classmethod
    def parse(cls, text: str, timezone: str | None = None) -> CronSchedule:
        """Raises CronError for a bad expression, an unknown zone, or an expression that never matches."""
        schedule = cls(text, zone(timezone))
        schedule.next_wall(datetime(2000, 1, 1))
        return schedule

    def wall(self, timestamp: float) -> datetime:
        """The naive wall-clock time of `timestamp` in the zone (fold set for a repeated hour)."""
        return datetime.fromtimestamp(timestamp, self.tz).replace(tzinfo=None)

    def instant(self, wall: datetime) -> float:
        """The Unix time of a naive wall-clock time; a skipped time maps past the jump, a repeated one to its
        first occurrence (fold=0)."""
        wall = wall.replace(fold=0)
        return wall.replace(tzinfo=self.tz).timestamp() if self.tz else wall.timestamp()

    def next_wall(self, after: datetime) -> datetime:
        """The first matching wall-clock minute strictly after the naive `after`."""
        try:
            found: datetime = _matcher(self.text, after.replace(fold=0)).get_next(datetime)
        except _croniter().CroniterError as exc:
            raise CronError(f"{self.text!r} never matches: {exc}") from None
        return found

    def next_after(self, after_wall: datetime | None, now: float | None = None) -> tuple[datetime, float]:
        """(wall time, Unix time) of the next fire after both the wall time `after_wall` (the last fire; None
        before the first) and `now` (default: the current time). A wall time is never returned twice, so a
        repeated hour cannot double a run. Raises CronError when nothing matches within five years."""
        now = time.time() if now is None else now
        start = self.wall(now).replace(fold=0)
        if after_wall is not None:
            start = max(start, after_wall.replace(fold=0))
        wall = self.next_wall(start)
        return wall, self.instant(wall)


def validate(text: str, timezone: str | None = None) -> str:
    """Check that `text` parses and matches some day; return it unchanged. Raises CronError."""
    CronSchedule.parse(text, timezone)
    return text


__all__ = ["CronError", "CronSchedule", "validate", "zone"]
