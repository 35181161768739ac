"""What every trigger kind shares: the run-time state of one trigger and the host that starts its runs.

A trigger kind (file, webhook, time) is a Service built from a `TriggerHost` and the triggers of that kind.
It decides *when* a trigger fires and *what* the prompt is; the host starts the run through the router
(so it is counted, drained on shutdown and forwarded downstream like any other run) and reports it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loguru import logger

from llmling.errors import AgentBusyError, AgentRunError, LLMlingError
from llmling.ipc.peer import new_id
from llmling.supervisor.router import Trace

if TYPE_CHECKING:
    from llmling.config.triggers import FileTrigger, TimeTrigger, WebhookTrigger
    from llmling.supervisor.system import Supervisor

Message = dict[str, Any]
# Settled agent states in which an agent cannot take a run. `starting`/`restarting` are transitions: an
# agent restarting after a crash takes runs (they wait for READY); one retrying a failed start does not.
UNAVAILABLE = ("stopped", "failed")


class UnknownTriggerError(LLMlingError):
    """A request named a trigger the agent does not have."""


class TriggerState:
    """One configured trigger at run time. The registry owns it; its kind's service reads `enabled`.

    Invariant: `in_flight` counts this trigger's runs started and not finished.
    """

    __slots__ = ("agent", "config", "enabled", "failed", "fired", "in_flight", "last_error", "rejected", "skipped")

    def __init__(self, agent: str, config: FileTrigger | WebhookTrigger | TimeTrigger) -> None:
        self.agent = agent
        self.config = config
        self.enabled = config.enabled
        self.fired = 0
        self.skipped = 0
        self.failed = 0
        # Requests the trigger refused (webhooks: every 4xx/5xx answer that started no run, and 429).
        self.rejected = 0
        self.in_flight = 0
        self.last_error: str | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def kind(self) -> str:
        return self.config.type

    @property
    def label(self) -> str:
        return f"{self.agent}/{self.name}"

    def info(self) -> Message:
        return {
            "agent": self.agent,
            "name": self.name,
            "type": self.kind,
            "enabled": self.enabled,
            "fired": self.fired,
            "skipped": self.skipped,
            "failed": self.failed,
            "rejected": self.rejected,
            "in_flight": self.in_flight,
            "last_error": self.last_error,
        }


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a run ended: its result, or the error that ended it and its kind (AgentRunError.kind)."""

    result: Message | None = None
    error: str | None = None
    kind: str | None = None


OnEnd = Callable[[Outcome], None]


@dataclass(frozen=True, slots=True)
class Firing:
    """A run that was started: its ids are known at once, `task` ends with its Outcome (it never raises)."""

    id: str
    trace_id: str
    task: asyncio.Task[Outcome]
    # Resolves once the run is accepted (journaled): None, or the error that kept it from being accepted.
    accepted: asyncio.Future[str | None]


class TriggerHost:
    """The part of the supervisor that trigger kinds and background runs use."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor
        self.router = supervisor.router
        self.base_dir = supervisor.config.base_dir
        self.shutdown_timeout = supervisor.config.shutdown_timeout
        self.log = logger.bind(agent="triggers")
        # Invariant: each agent's last state other than a transition (starting, restarting).
        self._settled: dict[str, str] = {}
        supervisor.add_listener(self._on_event)

    def _on_event(self, event: Message) -> None:
        if event.get("event") == "agent_state" and event.get("state") not in ("starting", "restarting"):
            self._settled[str(event.get("agent"))] = str(event.get("state"))

    def unavailable(self, agent: str) -> str | None:
        """Why `agent` cannot take a run now (its settled state), or None. Raises UnknownAgentError."""
        state = self.router.slot(agent).state
        if state not in ("starting", "restarting"):
            return state if state in UNAVAILABLE else None
        settled = self._settled.get(agent)
        return settled if settled in UNAVAILABLE else None

    @property
    def accepting(self) -> bool:
        """False once shutdown began (no new runs)."""
        return self.router.accepting and not self._supervisor.stopping

    def emit(self, event: Message) -> None:
        self._supervisor.emit(event)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        """A task of the supervisor's root group; it must never raise (that would stop the system)."""
        return self._supervisor.spawn_service_task(coro, name=name)

    def start_run(
        self, agent: str, prompt: str, on_end: OnEnd | None = None, source: str = "background"
    ) -> Firing:
        """Start a run of `agent` now (as a new trace) and return its ids; `on_end(outcome)` is called last.
        Acknowledge the run (a webhook's 202) only once `Firing.accepted` resolved to None.

        Raises AgentBusyError (nothing started) when the agent's queue is full.
        """
        self.router.slot(agent).check_capacity()
        trace = Trace(uuid.uuid4().hex)
        run_id = new_id()
        accepted: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        task = self.spawn(
            self._run(agent, prompt, trace, run_id, on_end, source, accepted), name=f"run-{agent}-{run_id}"
        )
        return Firing(run_id, trace.id, task, accepted)

    async def _run(
        self,
        agent: str,
        prompt: str,
        trace: Trace,
        run_id: str,
        on_end: OnEnd | None,
        source: str,
        accepted: asyncio.Future[str | None],
    ) -> Outcome:
        outcome = Outcome(error="cancelled", kind="cancelled")

        def on_accepted(_unit: object) -> None:
            if not accepted.done():
                accepted.set_result(None)

        try:
            result, _ = await self.router.send(
                agent, prompt, trace=trace, run_id=run_id, source=source, on_accepted=on_accepted
            )
            outcome = Outcome(result=result)
        except asyncio.CancelledError:
            raise
        except AgentRunError as exc:
            outcome = Outcome(error=str(exc), kind=exc.kind)
            logger.bind(agent=agent).warning("run {} failed: {}", run_id, exc)
        except LLMlingError as exc:
            outcome = Outcome(error=str(exc), kind="error")
            logger.bind(agent=agent).warning("run {} failed: {}", run_id, exc)
        except Exception as exc:
            outcome = Outcome(error=f"{type(exc).__name__}: {exc}", kind="error")
            logger.bind(agent=agent).opt(exception=exc).error("run {} failed", run_id)
        finally:
            if not accepted.done():
                accepted.set_result(outcome.error or "not accepted")
            if on_end is not None:
                try:
                    on_end(outcome)
                except Exception:
                    self.log.exception("run end callback failed")
        return outcome

    def fire(self, trigger: TriggerState, prompt: str, **detail: Any) -> Firing:
        """Start a run for `trigger` and emit `trigger_fired` with its ids and `detail`.

        Raises AgentBusyError (nothing started, nothing counted) when the agent's queue is full.
        """

        def on_end(outcome: Outcome) -> None:
            trigger.in_flight -= 1
            if outcome.error is not None:
                trigger.failed += 1
                trigger.last_error = outcome.error

        firing = self.start_run(trigger.agent, prompt, on_end, source=trigger.kind)
        trigger.fired += 1
        trigger.in_flight += 1
        self.emit(
            {
                "event": "trigger_fired",
                "agent": trigger.agent,
                "trigger": trigger.name,
                "kind": trigger.kind,
                "id": firing.id,
                "trace_id": firing.trace_id,
                **detail,
            }
        )
        return firing

    def try_fire(self, trigger: TriggerState, prompt: str, **detail: Any) -> Firing | None:
        """`fire`, or, when the agent's queue is full, count and report the drop (`trigger_skipped` busy)."""
        try:
            return self.fire(trigger, prompt, **detail)
        except AgentBusyError as exc:
            self.log.bind(agent=trigger.agent).warning("trigger {}: {}; dropped", trigger.label, exc)
            self.skip(trigger, "busy", queued=exc.queued)
            return None

    def skip(self, trigger: TriggerState, reason: str, **detail: Any) -> None:
        """Count and report a tick or event that did not become a run."""
        trigger.skipped += 1
        self.emit(
            {
                "event": "trigger_skipped",
                "agent": trigger.agent,
                "trigger": trigger.name,
                "kind": trigger.kind,
                "reason": reason,
                **detail,
            }
        )


def render(template: str, **fields: Any) -> str:
    """str.format with named fields only. Raises ValueError with a readable cause."""
    try:
        return template.format(**fields)
    except (KeyError, IndexError, AttributeError, TypeError, ValueError) as exc:
        raise ValueError(f"template: {type(exc).__name__}: {exc}") from None


__all__ = ["UNAVAILABLE", "Firing", "Outcome", "TriggerHost", "TriggerState", "UnknownTriggerError", "render"]
