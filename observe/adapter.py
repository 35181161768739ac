"""The one place that reads the fields of delivery (attempts, dead letters), admission (queues, concurrency) and
replicas / remote hosts (an agent's `processes`).

Events and status entries are read through these typed views, so a renamed field is changed here only. A field
a system does not send (an older supervisor, `durability: off`) reads as None (or 1 for the attempt), and the
views show it as unknown instead of failing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Message = dict[str, Any]

# delivery: the requests of dead letters and their event.
DEAD_LETTERS_REQUEST = "dead_letters"  # {"t","id"[,"agent"]} → {"t":"ok","dead_letters":[DeadLetter...]}
RETRY_REQUEST = "retry"  # {"t","id","ids":[run id, ...]} → {"t":"ok","retried":[run id, ...]}
DEAD_LETTER_EVENT = "dead_letter"  # agent, id, trace_id, parent_id, attempts, reason
RETRY_EVENT = "run_retry"  # agent, id, trace_id, attempt, kind, error, delay
# admission: restart an agent.
RESTART_REQUEST = "restart"


def as_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def as_float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def as_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class Load:
    """An agent's admission figures from its `status` entry (admission: `queued`, `running`; `concurrency`
    and `max_queue` when the status carries them)."""

    queued: int | None
    running: int | None
    concurrency: int | None
    max_queue: int | None

    @classmethod
    def of(cls, agent_status: Message) -> Load:
        return cls(
            queued=as_int(agent_status.get("queued")),
            running=as_int(agent_status.get("running")),
            concurrency=as_int(agent_status.get("concurrency")),
            max_queue=as_int(agent_status.get("max_queue")),
        )


@dataclass(frozen=True, slots=True)
class Process:
    """One process of an agent, from its status entry's `processes` (replicas, remote hosts): where it runs."""

    host: str | None
    pid: int | None
    state: str | None

    @classmethod
    def of(cls, info: Message) -> Process:
        return cls(host=as_str(info.get("host")), pid=as_int(info.get("pid")), state=as_str(info.get("state")))


def processes(agent_status: Message) -> list[Process] | None:
    """The processes an agent's status entry lists (`processes`: replicas, remote hosts), None without them."""
    listed = agent_status.get("processes")
    if not isinstance(listed, list):
        return None
    return [Process.of(info) for info in listed if isinstance(info, dict)]


def attempt(event: Message) -> int:
    """The attempt of a run event (delivery: 1-based `attempt`); 1 when the event has none."""
    return as_int(event.get("attempt")) or 1


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One entry of a `dead_letters` reply (delivery's `Unit.info()`)."""

    id: str
    agent: str
    trace_id: str | None
    parent_id: str | None
    prompt: str
    attempts: int
    reason: str | None
    finished_at: float | None

    @classmethod
    def of(cls, info: Message) -> DeadLetter:
        return cls(
            id=str(info.get("id")),
            agent=str(info.get("agent")),
            trace_id=as_str(info.get("trace_id")),
            parent_id=as_str(info.get("parent_id")),
            prompt=str(info.get("prompt") or ""),
            attempts=as_int(info.get("attempts")) or 0,
            reason=as_str(info.get("reason")),
            finished_at=as_float(info.get("finished_at")),
        )


def dead_letters(reply: Message) -> list[DeadLetter]:
    return [DeadLetter.of(info) for info in reply.get("dead_letters") or () if isinstance(info, dict)]


def retry_request(run_id: str) -> Message:
    return {"t": RETRY_REQUEST, "ids": [run_id]}


__all__ = [
    "DEAD_LETTERS_REQUEST",
    "DEAD_LETTER_EVENT",
    "RESTART_REQUEST",
    "RETRY_EVENT",
    "RETRY_REQUEST",
    "DeadLetter",
    "Load",
    "Process",
    "as_float",
    "as_int",
    "as_str",
    "attempt",
    "dead_letters",
    "processes",
    "retry_request",
]
