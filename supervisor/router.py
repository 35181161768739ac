"""Hub routing: a run goes to its agent's process; its reply goes back to the caller and on, through each
active route of that agent, to the route's target as a new run of the same trace.

A trace is the tree of runs that one message started. The router counts each trace's pending runs, so a
caller can wait for the whole downstream tree, and each agent's pending downstream runs, so
`complete_tasks()` can wait for the runs not awaited by anyone.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from llmling.config.schema import RetryConfig
from llmling.errors import AgentRunError, LLMlingError, UnknownAgentError
from llmling.ipc.frames import PromptTooLarge, check_prompt_size
from llmling.ipc.messages import RunFrame
from llmling.ipc.peer import OnChunk, new_id
from llmling.names import unknown
from llmling.supervisor.conditions import Predicate, Transform
from llmling.supervisor.journal import Journal, JournalError, Unit
from llmling.supervisor.runner import AgentRunner

Message = dict[str, Any]
OnEvent = Callable[[Message], None]
# The `run_started` event carries at most this many characters of the prompt.
EVENT_PROMPT_CHARS = 2000
# What a caller of a run is told when the system stopped before the run's outcome: it stays in the journal.
LEFT_FOR_NEXT_START = "the system stopped before the run finished; it stays in the journal for the next start"
# Seconds a forwarded or resumed run waits before trying again an agent whose queue is full (doubling).
BUSY_WAIT_START = 0.05
BUSY_WAIT_MAX = 1.0
# Seconds at most between two attempts of a run.
BACKOFF_MAX = 60.0


def backoff(base: float, attempt: int) -> float:
    """Seconds before the attempt after `attempt`: `base * 2**(attempt-1)`, capped, times a 0.5-1.0 jitter."""
    return min(BACKOFF_MAX, base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


@dataclass(eq=False)
class Route:
    """`source >> target`, from YAML `connections:` or from Python; both behave the same."""

    source: str
    target: str
    wait_for_completion: bool = False
    filter: Predicate | None = None
    transform: Transform | None = None
    stop_condition: Predicate | None = None
    # Made from the config's `connections:` (replaced on reload), not by `>>` in Python.
    from_config: bool = False
    # Invariant: an inactive route is no longer in its router (disconnected, or its stop condition matched).
    active: bool = field(default=True, init=False)


class Trace:
    __slots__ = ("done", "id", "pending", "results")

    def __init__(self, trace_id: str | None = None) -> None:
        self.id = trace_id or uuid.uuid4().hex
        # Invariant: the number of runs of this trace started and not finished; `done` is set when it is 0.
        self.pending = 0
        self.done = asyncio.Event()
        # Downstream results and errors, in completion order.
        self.results: list[Message] = []


class Router:
    def __init__(
        self,
        slots: dict[str, AgentRunner],
        max_hops: int,
        spawn_task: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
        on_event: OnEvent,
        journal: Journal | None = None,
        retry: Callable[[str], RetryConfig] | None = None,
    ) -> None:
        self._slots = slots
        # With a journal, every unit is written before it is acknowledged or forwarded (durability sync/batch).
        self._journal = journal
        self._retry = retry or (lambda agent: RetryConfig())
        self.max_hops = max_hops
        self._spawn_task = spawn_task
        self._on_event = on_event
        self._routes: dict[str, list[Route]] = {name: [] for name in slots}
        self._traces: dict[str, Trace] = {}
        # Invariant: per agent, the downstream run tasks targeting it that have not finished.
        self._pending: dict[str, set[asyncio.Task[Any]]] = {name: set() for name in slots}
        self.accepting = True
        # Set after the drain: a run that fails from then on (its agent is being stopped) is neither retried
        # nor dead: it stays in the journal as it is.
        self.closing = False

    # -- routes ---------------------------------------------------------------------------------------------
    def slot(self, agent: str) -> AgentRunner:
        slot = self._slots.get(agent)
        if slot is None:
            raise UnknownAgentError(unknown("agent", agent, self._slots))
        return slot

    def connect(self, route: Route) -> Route:
        self.slot(route.source)
        self.slot(route.target)
        self._routes[route.source].append(route)
        return route

    def disconnect(self, route: Route) -> None:
        route.active = False
        routes = self._routes.get(route.source, [])
        if route in routes:
            routes.remove(route)

    def add_agent(self, name: str) -> None:
        """Route to and from `name`, whose slot the supervisor just added to the shared slots."""
        self._routes.setdefault(name, [])
        self._pending.setdefault(name, set())

    def remove_agent(self, name: str) -> None:
        """Stop routing to and from `name` (its runs in flight go on; new sends get UnknownAgentError)."""
        for routes in list(self._routes.values()):
            for route in list(routes):
                if name in (route.source, route.target):
                    self.disconnect(route)
        self._routes.pop(name, None)
        self._pending.pop(name, None)

    def replace_config_routes(self, agents: set[str], routes: list[Route]) -> None:
        """Replace the config-made routes leaving `agents` with `routes` (a reload); Python-made routes stay."""
        for agent in agents:
            for route in list(self._routes.get(agent, ())):
                if route.from_config:
                    self.disconnect(route)
        for route in routes:
            self.connect(route)

    def routes(self, agent: str) -> list[Route]:
        return list(self._routes.get(agent, ()))

    def waits_by_default(self, agent: str) -> bool:
        """Whether `run()` on `agent` waits for its downstream tree when the caller does not say."""
        return any(route.wait_for_completion for route in self._routes.get(agent, ()))

    # -- runs -----------------------------------------------------------------------------------------------
    @property
    def busy(self) -> int:
        return sum(trace.pending for trace in self._traces.values())

    async def send(
        self,
        agent: str,
        prompt: str,
        on_chunk: OnChunk | None = None,
        trace: Trace | None = None,
        run_id: str | None = None,
        source: str = "api",
        on_accepted: Callable[[Unit], None] | None = None,
    ) -> tuple[Message, Trace]:
        """Run `agent` as the root of a trace (a new one unless given); return its result and the trace.

        The run is journaled first (with a journal), then `on_accepted(unit)` is called: acknowledge there.
        Raises UnknownAgentError, AgentBusyError or JournalError before acceptance, AgentRunError after it
        (the run ended as a dead letter, or the system stopped and it waits in the journal). Give
        `trace`/`run_id` to know the ids before the run ends.
        """
        slot = self.slot(agent)
        try:
            check_prompt_size(prompt)  # every source: clients, triggers, the Python API
        except PromptTooLarge as exc:
            raise AgentRunError(agent, str(exc)) from None
        slot.admit()  # AgentBusyError: refused before it is journaled or acknowledged
        trace = trace or Trace()
        unit = Unit(run_id or new_id(), trace.id, None, agent, prompt, 0, source)
        self._begin(trace)
        try:
            try:
                if self._journal is not None:
                    await self._journal.accept(unit)
                if on_accepted is not None:
                    on_accepted(unit)
            except BaseException:
                slot.release()
                raise
            result = await self._deliver(slot, unit, trace, on_chunk, admitted=True)
        finally:
            self._end(trace)
        return result, trace

    def resume(self, units: list[Unit]) -> None:
        """Deliver units read back from the journal (after a restart, or revived dead letters), each as a
        task of the root group; their outcomes are recorded like any other run's."""
        traces: dict[str, Trace] = {}
        for unit in units:
            trace = traces.get(unit.trace_id) or self._traces.get(unit.trace_id) or Trace(unit.trace_id)
            traces[trace.id] = trace
            self._begin(trace)
            task = self._spawn_task(self._resumed(unit, trace))
            if unit.agent in self._pending:
                pending = self._pending[unit.agent]
                pending.add(task)
                task.add_done_callback(pending.discard)

    async def _resumed(self, unit: Unit, trace: Trace) -> None:
        try:
            slot = self._slots.get(unit.agent)
            if slot is None:
                await self._dead(unit, AgentRunError(unit.agent, "agent was removed", kind="unavailable"))
                return
            if unit.state == "retry" and unit.next_at is not None:
                await asyncio.sleep(min(max(unit.next_at - time.time(), 0.0), BACKOFF_MAX))  # its backoff
            await self._deliver(slot, unit, trace, None)
        except asyncio.CancelledError:
            raise
        except LLMlingError as exc:
            logger.bind(agent=unit.agent).warning("resumed run {} failed: {}", unit.id, exc)
        except Exception as exc:
            logger.bind(agent=unit.agent).opt(exception=exc).error("resumed run {} failed", unit.id)
        finally:
            self._end(trace)

    async def complete_tasks(self, agent: str) -> None:
        """Wait until no downstream run targeting `agent` is pending (including ones started meanwhile)."""
        self.slot(agent)
        pending = self._pending[agent]
        while pending:
            await asyncio.wait(set(pending))

    def _begin(self, trace: Trace) -> None:
        trace.pending += 1
        self._traces[trace.id] = trace

    def _end(self, trace: Trace) -> None:
        trace.pending -= 1
        if trace.pending == 0:
            trace.done.set()
            self._traces.pop(trace.id, None)

    async def _deliver(
        self, slot: AgentRunner, unit: Unit, trace: Trace, on_chunk: OnChunk | None, admitted: bool = False
    ) -> Message:
        """Run `unit` until it has an outcome: its result (returned), or a dead letter (AgentRunError).

        Crashes and timeouts (per the agent's `retry.on`) are redelivered with the same id and attempt + 1.
        When the system stops meanwhile, the unit stays in the journal as it is, for the next start.
        """
        retry = self._retry(slot.name)
        busy_wait = BUSY_WAIT_START
        while True:
            unit.attempt += 1
            unit.state = "running"
            if self._journal is not None and unit.attempt > 1:
                self._journal.update(unit)  # a redelivery keeps its count; nothing waits for it
            # `timeout` (the agent's run_timeout) is the slot's to add.
            message: RunFrame = {
                "t": "run",
                "id": unit.id,
                "prompt": unit.prompt,
                "trace_id": unit.trace_id,
                "parent_id": unit.parent_id,
                "hops": unit.hops,
                "stream": on_chunk is not None,
                "attempt": unit.attempt,
            }
            started = time.perf_counter()
            consumed, admitted = admitted, False
            self._on_event(
                {
                    "event": "run_started",
                    "agent": slot.name,
                    "id": unit.id,
                    "trace_id": unit.trace_id,
                    "parent_id": unit.parent_id,
                    "prompt": unit.prompt[:EVENT_PROMPT_CHARS],
                    "attempt": unit.attempt,
                }
            )
            try:
                # The first attempt of a root run consumes its admission (it counts as queued from here).
                reply = await slot.submit(message, on_chunk, admitted=consumed)
            except AgentRunError as exc:
                if self.closing:
                    if self._journal is None:
                        raise
                    raise AgentRunError(slot.name, LEFT_FOR_NEXT_START, kind="unavailable") from None
                unit.attempt = max(unit.attempt, exc.attempts or 0)  # redeliveries the transport made
                if exc.kind == "busy":  # a forwarded or resumed run waits for room; not an attempt
                    unit.attempt -= 1
                    await asyncio.sleep(busy_wait)
                    busy_wait = min(busy_wait * 2, BUSY_WAIT_MAX)
                    continue
                if exc.kind in retry.on and unit.attempt < retry.max_attempts:
                    delay = backoff(retry.backoff, unit.attempt)
                    unit.state, unit.next_at, unit.last_error = "retry", time.time() + delay, str(exc.cause)
                    if self._journal is not None:
                        self._journal.update(unit)
                    self._on_event(
                        {
                            "event": "run_retry",
                            "agent": slot.name,
                            "id": unit.id,
                            "trace_id": unit.trace_id,
                            "attempt": unit.attempt,
                            **exc.reply_fields(),
                            "delay": delay,
                        }
                    )
                    logger.bind(agent=slot.name).warning(
                        "run {} attempt {} failed ({}): {}; redelivering in {:.2f} s",
                        unit.id,
                        unit.attempt,
                        exc.kind,
                        exc.cause,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    continue
                await self._dead(unit, exc)
                raise
            result = {
                "agent": slot.name,
                "content": reply.get("content", ""),
                "id": unit.id,
                "trace_id": unit.trace_id,
                "parent_id": unit.parent_id,
                "usage": reply.get("usage") or {},
                "elapsed": reply.get("elapsed"),
                "hops": unit.hops,
                "attempt": unit.attempt,
            }
            finished = {
                "event": "run_finished",
                **result,
                "prompt": unit.prompt,
                "elapsed_total": time.perf_counter() - started,
            }
            self._on_event(finished)
            forwarded = await self._forward(result, trace)
            if self._journal is not None:
                # The outcome, its history row and the runs it was forwarded into: one transaction.
                committed = self._journal.done(unit, finished, [child for _, child in forwarded])
            for route, child in forwarded:
                self._start_downstream(route, child, trace)
            if self._journal is not None:
                await committed
            return result

    async def _dead(self, unit: Unit, exc: AgentRunError) -> None:
        """Record the unit as a dead letter with its reason; emit `run_failed` and `dead_letter`."""
        unit.state, unit.finished_at, unit.next_at = "dead", time.time(), None
        unit.last_error = f"{exc.kind}: {exc.cause}"
        if self._journal is not None:
            self._journal.update(unit)
            try:
                await self._journal.flush()
            except JournalError as error:
                logger.bind(agent=unit.agent).error("dead letter {} not recorded: {}", unit.id, error)
        self._on_event(
            {
                "event": "run_failed",
                "agent": unit.agent,
                "id": unit.id,
                "trace_id": unit.trace_id,
                "parent_id": unit.parent_id,
                **exc.reply_fields(),
                "attempt": unit.attempt,
            }
        )
        self._on_event(
            {
                "event": "dead_letter",
                "agent": unit.agent,
                "id": unit.id,
                "trace_id": unit.trace_id,
                "parent_id": unit.parent_id,
                "attempts": unit.attempt,
                "reason": unit.last_error,
            }
        )

    async def _forward(self, result: Message, trace: Trace) -> list[tuple[Route, Unit]]:
        """The runs `result` goes on to, one per active route that lets it through (filter, transform and
        stop condition are applied here, before the reply's outcome is recorded)."""
        routes = self._routes.get(result["agent"])
        if not routes:
            return []
        hops = result["hops"]
        if hops + 1 > self.max_hops:
            logger.bind(agent=result["agent"]).warning(
                "trace {} reached max_hops={}; not forwarding", trace.id, self.max_hops
            )
            self._on_event({"event": "max_hops", "agent": result["agent"], "trace_id": trace.id, "hops": hops})
            return []
        forwarded = []
        for route in list(routes):
            try:
                content = await self._routed(route, result["content"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.bind(agent=route.target).opt(exception=exc).warning(
                    "connection {} >> {} failed", route.source, route.target
                )
                trace.results.append(
                    {"agent": route.target, "error": f"{type(exc).__name__}: {exc}", "parent_id": result["id"]}
                )
                continue
            if content is not None:
                try:
                    check_prompt_size(content)  # a transform may have grown it past what a run frame holds
                except PromptTooLarge as exc:
                    trace.results.append({"agent": route.target, "error": str(exc), "parent_id": result["id"]})
                    continue
                child = Unit(new_id(), trace.id, result["id"], route.target, content, hops + 1, "forward")
                forwarded.append((route, child))
        return forwarded

    async def _routed(self, route: Route, content: str) -> str | None:
        """What `route` forwards of `content` (None: nothing)."""
        if route.stop_condition is not None and await route.stop_condition(content):
            self.disconnect(route)
            self._on_event({"event": "connection_stopped", "source": route.source, "target": route.target})
            return None
        if route.filter is not None and not await route.filter(content):
            return None
        if route.transform is not None:
            content = await route.transform(content)
        return content

    def _start_downstream(self, route: Route, unit: Unit, trace: Trace) -> None:
        # Counted now, before the task runs, so the trace cannot look finished in between.
        self._begin(trace)
        task = self._spawn_task(self._downstream(route, unit, trace))
        pending = self._pending[route.target]
        pending.add(task)
        task.add_done_callback(pending.discard)

    async def _downstream(self, route: Route, unit: Unit, trace: Trace) -> None:
        try:
            result = await self._deliver(self.slot(route.target), unit, trace, None)
            trace.results.append(result)
        except asyncio.CancelledError:
            raise
        except AgentRunError as exc:
            logger.bind(agent=route.target).warning("downstream run failed: {}", exc.cause)
            entry = {"agent": route.target, **exc.reply_fields(), "id": unit.id, "parent_id": unit.parent_id}
            if unit.state == "dead":
                entry["dead"] = True
            trace.results.append(entry)
        except Exception as exc:
            logger.bind(agent=route.target).opt(exception=exc).warning(
                "connection {} >> {} failed", route.source, route.target
            )
            trace.results.append(
                {"agent": route.target, "error": f"{type(exc).__name__}: {exc}", "parent_id": unit.parent_id}
            )
        finally:
            self._end(trace)

    async def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` for every pending run; True when all finished."""
        try:
            async with asyncio.timeout(timeout):
                while self._traces:
                    await next(iter(self._traces.values())).done.wait()
        except TimeoutError:
            return False
        return True
