"""A five-field cron expression (`minute hour day-of-month month day-of-week`) and its next matching minute.

Each field takes `*`, a value, a range `a-b`, a step `*/n`, `a-b/n` or `a/n` (from `a` to the field's end),
and comma-separated lists of those. Months and weekdays also take English names (`jan`, `mon`); a weekday
of 7 is Sunday, like 0. As in Vixie cron, when both day-of-month and day-of-week are restricted (neither is
`*`), a day matches when either matches. `@hourly`, `@daily` (`@midnight`), `@weekly`, `@monthly`,
`@yearly` (`@annually`) are accepted. Times are local wall-clock times, naive datetimes.

Pure Python, no dependency: the config validates expressions with it and the time triggers schedule with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_MONTHS = {name: i for i, name in enumerate(_MONTH_NAMES, 1)}
_DAYS = {name: i for i, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# (name, lowest, highest, names) of each field, in order.
_FIELDS = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)
# How far ahead `next_after` looks before it decides an expression never matches (e.g. `0 0 30 2 *`).
_HORIZON = timedelta(days=366 * 5)


class CronError(ValueError):
    """The expression is not valid cron; the message names the field."""


def _value(text: str, field: str, low: int, high: int, names: dict[str, int]) -> int:
    key = text.lower()
    if key in names:
        return names[key]
    if not text.isdigit():
        raise CronError(
            f"{field}: {text!r} is not a number" + (f" or a name ({', '.join(names)})" if names else "")
        )
    value = int(text)
    if not low <= value <= high:
        raise CronError(f"{field}: {value} is out of range {low}-{high}")
    return value


def _parse_field(text: str, field: str, low: int, high: int, names: dict[str, int]) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise CronError(f"{field}: empty list item in {text!r}")
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"{field}: step {step_text!r} must be a positive number")
            step = int(step_text)
        if base == "*":
            start, end = low, high
        elif "-" in base:
            first, _, last = base.partition("-")
            start, end = _value(first, field, low, high, names), _value(last, field, low, high, names)
            if start > end:
                raise CronError(f"{field}: range {base!r} goes backwards")
        else:
            start = _value(base, field, low, high, names)
            end = high if slash else start
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True, slots=True)
class Cron:
    """A parsed expression. `Cron.parse(text)` raises CronError; `next_after(t)` gives the next match."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday (7 is folded into 0)
    # Whether day-of-month / day-of-week were `*` (Vixie cron's "either matches" rule needs it).
    any_day: bool
    any_weekday: bool

    @classmethod
    def parse(cls, text: str) -> Cron:
        expression = _MACROS.get(text.strip().lower(), text)
        parts = expression.split()
        if len(parts) != 5:
            raise CronError(f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}")
        fields = [_parse_field(part, *spec) for part, spec in zip(parts, _FIELDS, strict=True)]
        weekdays = frozenset(day % 7 for day in fields[4])
        return cls(
            text=text,
            minutes=fields[0],
            hours=fields[1],
            days=fields[2],
            months=fields[3],
            weekdays=weekdays,
            any_day=parts[2].startswith("*"),
            any_weekday=parts[4].startswith("*"),
        )

    def matches(self, when: datetime) -> bool:
        return (
            when.minute in self.minutes
            and when.hour in self.hours
            and when.month in self.months
            and self._day_matches(when)
        )

    def _day_matches(self, when: datetime) -> bool:
        day = when.day in self.days
        weekday = (when.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return day and weekday
        return day or weekday

    def next_after(self, after: datetime) -> datetime:
        """The first matching minute strictly after `after`. Raises CronError if none comes in five years."""
        when = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
        limit = when + _HORIZON
        while when < limit:
            if when.month not in self.months:
                year, month = (when.year + 1, 1) if when.month == 12 else (when.year, when.month + 1)
                when = when.replace(year=year, month=month, day=1, hour=0, minute=0)
            elif not self._day_matches(when):
                when = when.replace(hour=0, minute=0) + timedelta(days=1)
            elif when.hour not in self.hours:
                when = when.replace(minute=0) + timedelta(hours=1)
            elif when.minute not in self.minutes:
                when += timedelta(minutes=1)
            else:
                return when
        raise CronError(f"{self.text!r} never matches")


def validate(text: str) -> str:
    """Check that `text` parses and matches some day; return it unchanged. Raises CronError."""
    Cron.parse(text).next_after(datetime(2000, 1, 1))
    return text


__all__ = ["Cron", "CronError", "validate"]
