"""Typed results of runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts and cost of one run; `None` where the backend does not know (callbacks, unmapped models)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cost: float | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Usage:
        data = data or {}
        return cls(
            prompt_tokens=data.get("prompt_tokens"),
            completion_tokens=data.get("completion_tokens"),
            total_tokens=data.get("total_tokens"),
            cost=data.get("cost"),
        )


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One agent's reply to one run."""

    content: str
    agent: str
    id: str
    trace_id: str
    parent_id: str | None = None
    usage: Usage = field(default_factory=Usage)
    # Seconds the agent spent on the run (its model call or callback), measured in its process.
    elapsed: float | None = None
    # The runs this message triggered downstream, when the caller waited for them.
    downstream: tuple[ChatMessage, ...] = ()

    @classmethod
    def from_result(cls, result: dict[str, Any], downstream: tuple[ChatMessage, ...] = ()) -> ChatMessage:
        return cls(
            content=result.get("content", ""),
            agent=result["agent"],
            id=result["id"],
            trace_id=result["trace_id"],
            parent_id=result.get("parent_id"),
            usage=Usage.from_dict(result.get("usage")),
            elapsed=result.get("elapsed"),
            downstream=downstream,
        )
