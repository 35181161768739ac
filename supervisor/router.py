"""Hub routing: a run goes to its agent's process; its reply goes back to the caller and on, through each
active route of that agent, to the route's target as a new run of the same trace.

A trace is the tree of runs that one message started. The router counts each trace's pending runs, so a
caller can wait for the whole downstream tree, and each agent's pending downstream runs, so
`complete_tasks()` can wait for the runs not awaited by anyone.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from llmling.errors import AgentRunError, UnknownAgentError
from llmling.ipc.peer import OnChunk, new_id
from llmling.supervisor.conditions import Predicate, Transform
from llmling.supervisor.slot import AgentSlot

Message = dict[str, Any]
OnEvent = Callable[[Message], None]


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
        slots: dict[str, AgentSlot],
        max_hops: int,
        spawn_task: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
        on_event: OnEvent,
    ) -> None:
        self._slots = slots
        self.max_hops = max_hops
        self._spawn_task = spawn_task
        self._on_event = on_event
        self._routes: dict[str, list[Route]] = {name: [] for name in slots}
        self._traces: dict[str, Trace] = {}
        # Invariant: per agent, the downstream run tasks targeting it that have not finished.
        self._pending: dict[str, set[asyncio.Task[Any]]] = {name: set() for name in slots}
        self.accepting = True

    # -- routes ---------------------------------------------------------------------------------------------
    def slot(self, agent: str) -> AgentSlot:
        slot = self._slots.get(agent)
        if slot is None:
            raise UnknownAgentError(f"unknown agent {agent!r}")
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
    ) -> tuple[Message, Trace]:
        """Run `agent` as the root of a trace (a new one unless given); return its result and the trace.

        Raises UnknownAgentError or AgentRunError. Give `trace`/`run_id` to know the ids before the run ends.
        """
        slot = self.slot(agent)
        trace = trace or Trace()
        result = await self._run(slot, prompt, trace, None, 0, on_chunk, run_id or new_id())
        return result, trace

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

    async def _run(
        self,
        slot: AgentSlot,
        prompt: str,
        trace: Trace,
        parent_id: str | None,
        hops: int,
        on_chunk: OnChunk | None,
        run_id: str,
    ) -> Message:
        self._begin(trace)
        message = {
            "t": "run",
            "id": run_id,
            "prompt": prompt,
            "trace_id": trace.id,
            "parent_id": parent_id,
            "hops": hops,
            "stream": on_chunk is not None,
        }
        started = time.perf_counter()
        self._on_event({"event": "run_started", "agent": slot.name, "id": run_id, "trace_id": trace.id})
        try:
            reply = await slot.submit(message, on_chunk)
            result = {
                "agent": slot.name,
                "content": reply.get("content", ""),
                "id": run_id,
                "trace_id": trace.id,
                "parent_id": parent_id,
                "usage": reply.get("usage") or {},
                "elapsed": reply.get("elapsed"),
                "hops": hops,
            }
            self._on_event(
                {
                    "event": "run_finished",
                    **result,
                    "prompt": prompt,
                    "elapsed_total": time.perf_counter() - started,
                }
            )
            self._forward(result, trace, hops)
            return result
        except AgentRunError as exc:
            self._on_event(
                {"event": "run_failed", "agent": slot.name, "id": run_id, "trace_id": trace.id, "error": exc.cause}
            )
            raise
        finally:
            self._end(trace)

    def _forward(self, result: Message, trace: Trace, hops: int) -> None:
        routes = self._routes.get(result["agent"])
        if not routes:
            return
        if hops + 1 > self.max_hops:
            logger.bind(agent=result["agent"]).warning(
                "trace {} reached max_hops={}; not forwarding", trace.id, self.max_hops
            )
            self._on_event({"event": "max_hops", "agent": result["agent"], "trace_id": trace.id, "hops": hops})
            return
        for route in list(routes):
            # Counted now, before the task runs, so the trace cannot look finished in between.
            self._begin(trace)
            task = self._spawn_task(self._downstream(route, result, trace, hops + 1))
            pending = self._pending[route.target]
            pending.add(task)
            task.add_done_callback(pending.discard)

    async def _downstream(self, route: Route, parent: Message, trace: Trace, hops: int) -> None:
        try:
            content = parent["content"]
            if route.stop_condition is not None and await route.stop_condition(content):
                self.disconnect(route)
                self._on_event({"event": "connection_stopped", "source": route.source, "target": route.target})
                return
            if route.filter is not None and not await route.filter(content):
                return
            if route.transform is not None:
                content = await route.transform(content)
            result = await self._run(self.slot(route.target), content, trace, parent["id"], hops, None, new_id())
            trace.results.append(result)
        except asyncio.CancelledError:
            raise
        except AgentRunError as exc:
            logger.bind(agent=route.target).warning("downstream run failed: {}", exc.cause)
            trace.results.append({"agent": route.target, "error": exc.cause, "parent_id": parent["id"]})
        except Exception as exc:
            logger.bind(agent=route.target).opt(exception=exc).warning(
                "connection {} >> {} failed", route.source, route.target
            )
            trace.results.append(
                {"agent": route.target, "error": f"{type(exc).__name__}: {exc}", "parent_id": parent["id"]}
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
