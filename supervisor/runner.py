"""`AgentRunner`: what the router and the supervisor need of "an agent", whatever carries its runs.

One local process (`slot.AgentSlot`), several (`replicas: N`), or processes on other hosts reached over NATS:
the router admits, submits and reads status through this interface only, so it never knows which transport
carries a run. Each implementation keeps the slot's contract: `admit()`/`check_capacity()` raise
AgentBusyError when `max_queue` runs of the agent wait; `submit()` never refuses a forwarded run for a full
queue and raises AgentRunError with its `kind` ("crash", "timeout", "unavailable", "error").
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from llmling.ipc.messages import ResultFrame, RunFrame
from llmling.ipc.peer import OnChunk

Message = dict[str, Any]


class AgentRunner(Protocol):
    name: str
    # "starting", "ready", "restarting", "failed", "stopped" (and "unreachable" for remote agents).
    state: str
    last_error: str | None
    # Resolves once the first start has an outcome (`state` says which).
    started: asyncio.Future[None]

    def status(self) -> Message: ...
    def check_capacity(self) -> None: ...
    def admit(self) -> None: ...
    def release(self) -> None: ...
    async def submit(
        self, message: RunFrame, on_chunk: OnChunk | None, wait_ready: float = 60.0, admitted: bool = False
    ) -> ResultFrame: ...
    async def run(self) -> None: ...
    async def restart(self, grace: float) -> None: ...
    async def drain(self, timeout: float) -> bool: ...
    async def stop(self, grace: float) -> None: ...
