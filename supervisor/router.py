"""Hub routing: a run goes to its agent's process; its reply goes back to the caller and on to each
connected agent as a new run of the same trace.

A trace is the tree of runs that one message started. The router counts the runs of each trace that are
still pending, so a caller can wait for the whole downstream tree (`wait=True`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

from loguru import logger

from llmling.errors import AgentRunError, UnknownAgentError
from llmling.ipc.peer import OnChunk, new_id
from llmling.supervisor.slot import AgentSlot

Message = dict[str, Any]
OnEvent = Callable[[Message], None]


class Trace:
    __slots__ = ("done", "id", "pending", "results")

    def __init__(self, trace_id: str) -> None:
        self.id = trace_id
        # Invariant: the number of runs of this trace started and not finished; `done` is set when it is 0.
        self.pending = 0
        self.done = asyncio.Event()
        # Downstream results and errors, in completion order.
        self.results: list[Message] = []


class Router:
    def __init__(
        self,
        slots: dict[str, AgentSlot],
        connections: dict[str, list[str]],
        max_hops: int,
        spawn_task: Callable[..., asyncio.Task[Any]],
        on_event: OnEvent,
    ) -> None:
        self._slots = slots
        self.connections = connections
        self._max_hops = max_hops
        self._spawn_task = spawn_task
        self._on_event = on_event
        self._traces: dict[str, Trace] = {}
        self.accepting = True

    def slot(self, agent: str) -> AgentSlot:
        slot = self._slots.get(agent)
        if slot is None:
            raise UnknownAgentError(f"unknown agent {agent!r}")
        return slot

    @property
    def busy(self) -> int:
        return sum(trace.pending for trace in self._traces.values())

    async def send(self, agent: str, prompt: str, on_chunk: OnChunk | None = None) -> tuple[Message, Trace]:
        """Start a new trace with a run of `agent`. Returns the agent's result and the trace to wait on."""
        slot = self.slot(agent)
        trace = Trace(uuid.uuid4().hex)
        self._traces[trace.id] = trace
        result = await self._run(slot, prompt, trace, parent_id=None, hops=0, on_chunk=on_chunk)
        return result, trace

    async def _run(
        self,
        slot: AgentSlot,
        prompt: str,
        trace: Trace,
        parent_id: str | None,
        hops: int,
        on_chunk: OnChunk | None,
    ) -> Message:
        trace.pending += 1
        run_id = new_id()
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
            self._on_event({"event": "run_finished", **result, "elapsed_total": time.perf_counter() - started})
            self._forward(slot.name, result, trace, hops)
            return result
        finally:
            trace.pending -= 1
            if trace.pending == 0:
                trace.done.set()
                self._traces.pop(trace.id, None)

    def _forward(self, agent: str, result: Message, trace: Trace, hops: int) -> None:
        targets = self.connections.get(agent, ())
        if not targets:
            return
        if hops + 1 > self._max_hops:
            logger.bind(agent=agent).warning(
                "trace {} reached max_hops={}; not forwarding to {}", trace.id, self._max_hops, list(targets)
            )
            self._on_event({"event": "max_hops", "agent": agent, "trace_id": trace.id, "hops": hops})
            return
        for target in targets:
            # Counted now, before the task runs, so the trace cannot look finished in between.
            trace.pending += 1
            self._spawn_task(self._downstream(target, result, trace, hops + 1))

    async def _downstream(self, target: str, parent: Message, trace: Trace, hops: int) -> None:
        try:
            result = await self._run(self.slot(target), parent["content"], trace, parent["id"], hops, None)
            trace.results.append(result)
        except AgentRunError as exc:
            logger.bind(agent=target).warning("downstream run failed: {}", exc.cause)
            trace.results.append({"agent": target, "error": exc.cause, "parent_id": parent["id"]})
        finally:
            trace.pending -= 1
            if trace.pending == 0:
                trace.done.set()
                self._traces.pop(trace.id, None)

    async def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` for every pending run; True when all finished."""
        deadline = time.monotonic() + timeout
        for trace in list(self._traces.values()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(trace.done.wait(), remaining)
            except TimeoutError:
                return False
        return not self._traces
