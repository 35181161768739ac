"""`RunContext`: what a callback or a tool may know about the run it serves.

A callback (`callback: module:function`) or a tool gets it through a parameter annotated with `RunContext`
(or `RunContext | None`); the parameter is left out of a tool's JSON schema, so the model never sees it:

    from llmling import RunContext

    def handle(prompt: str, run: RunContext) -> str:
        if already_done(run.id):  # a redelivered run keeps its id and has attempt + 1
            return cached(run.id)
        ...

This module is plain data (no pydantic, no asyncio), imported by agent processes and users alike.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RunContext:
    """The run being served: its identity across redeliveries, its place in the message tree, its agent."""

    # The run's id; the same for every delivery of the run (a redelivery after a crash or a timeout).
    id: str
    # 1 for the first delivery, + 1 for each redelivery of the same run.
    attempt: int
    # The tree of runs (one message and what it caused downstream) this run belongs to.
    trace_id: str
    # The run whose reply this run's prompt is (a forwarded run); None for a root run.
    parent_id: str | None
    # The agent serving the run.
    agent: str
    # Forwarding hops from the trace's root run (0 for the root).
    hops: int = 0


__all__ = ["RunContext"]
