"""Typed views of the run events (`run_started`, `run_finished`, `run_failed`), shared by metrics, telemetry
and the dashboard. Reading an event never raises: a missing or mistyped field reads as None."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from llmling.observe import adapter
from llmling.observe.adapter import as_float as _float
from llmling.observe.adapter import as_int as _int
from llmling.observe.adapter import as_str as _str

Message = dict[str, Any]
RUN_EVENTS = frozenset({"run_started", "run_finished", "run_failed"})
OUTCOME_EVENTS = frozenset({"run_finished", "run_failed"})


def stamp(event: Message) -> float:
    """When the event happened: its `ts` (the event stream's), else now (a listener in the supervisor)."""
    return _float(event.get("ts")) or time.time()


# The typed views are read-only by convention, not frozen: a frozen dataclass's construction costs ~1.5 µs more,
# paid for every run event a dashboard reads.
@dataclass(slots=True)
class RunEnd:
    """A run's outcome, from `run_finished` (outcome "ok") or `run_failed` (outcome = its `kind`)."""

    agent: str
    id: str
    trace_id: str
    parent_id: str | None
    # Unix time the outcome was reported, and the run's duration as the supervisor saw it (None if unknown).
    ended_at: float
    seconds: float | None
    outcome: str
    attempt: int
    prompt_tokens: int
    completion_tokens: int
    cost: float | None
    hops: int | None
    prompt: str
    content: str
    error: str | None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def started_at(self) -> float | None:
        return self.ended_at - self.seconds if self.seconds is not None else None

    @classmethod
    def of(cls, event: Message) -> RunEnd | None:
        """The outcome an event reports, or None for any other event."""
        kind = event.get("event")
        if kind not in ("run_finished", "run_failed"):
            return None
        usage = event.get("usage") if isinstance(event.get("usage"), dict) else {}
        finished = kind == "run_finished"
        return cls(
            agent=str(event.get("agent")),
            id=str(event.get("id")),
            trace_id=str(event.get("trace_id")),
            parent_id=_str(event.get("parent_id")),
            ended_at=stamp(event),
            seconds=_float(event.get("elapsed_total")) or _float(event.get("elapsed")) if finished else None,
            outcome="ok" if finished else (_str(event.get("kind")) or "error"),
            attempt=adapter.attempt(event),
            prompt_tokens=_int(usage.get("prompt_tokens")) or 0,
            completion_tokens=_int(usage.get("completion_tokens")) or 0,
            cost=_float(usage.get("cost")),
            hops=_int(event.get("hops")),
            prompt=str(event.get("prompt") or ""),
            content=str(event.get("content") or ""),
            error=None if finished else str(event.get("error") or "failed"),
        )


@dataclass(slots=True)
class RunStart:
    """`run_started`: the run's ids, its parent when the event carries it, its attempt and prompt."""

    agent: str
    id: str
    trace_id: str
    parent_id: str | None
    started_at: float
    attempt: int
    prompt: str

    @classmethod
    def of(cls, event: Message) -> RunStart | None:
        if event.get("event") != "run_started":
            return None
        return cls(
            agent=str(event.get("agent")),
            id=str(event.get("id")),
            trace_id=str(event.get("trace_id")),
            parent_id=_str(event.get("parent_id")),
            started_at=stamp(event),
            attempt=adapter.attempt(event),
            prompt=str(event.get("prompt") or ""),
        )


__all__ = ["OUTCOME_EVENTS", "RUN_EVENTS", "RunEnd", "RunStart", "stamp"]
