"""A run as its span shows it, made in the telemetry worker from the run's outcome event (and its start, for a
failed run, whose event carries no duration)."""

from __future__ import annotations

from dataclasses import dataclass

from llmling.observe.runs import RunEnd, RunStart


@dataclass(frozen=True, slots=True)
class RunRecord:
    agent: str
    id: str
    trace_id: str
    parent_id: str | None
    started_at: float
    ended_at: float
    outcome: str
    attempt: int
    prompt_tokens: int
    completion_tokens: int
    cost: float | None
    hops: int | None
    error: str | None

    @classmethod
    def of(cls, end: RunEnd, start: RunStart | None) -> RunRecord:
        started = end.started_at or (start.started_at if start else end.ended_at)
        return cls(
            agent=end.agent,
            id=end.id,
            trace_id=end.trace_id,
            parent_id=end.parent_id or (start.parent_id if start else None),
            started_at=started,
            ended_at=end.ended_at,
            outcome=end.outcome,
            attempt=end.attempt,
            prompt_tokens=end.prompt_tokens,
            completion_tokens=end.completion_tokens,
            cost=end.cost,
            hops=end.hops,
            error=end.error[:500] if end.error else None,
        )


__all__ = ["RunRecord"]
