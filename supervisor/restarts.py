"""The `restart` control request (`llmling restart AGENT`): a fresh process, a reset restart intensity.

The answer comes once the fresh process is READY (`{"t":"ok","agent":{...status}}`) or its start failed
(`error` with the cause). In-flight runs get up to the system's `shutdown_timeout` to finish first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from llmling.errors import LLMlingError
from llmling.ipc.peer import Peer
from llmling.supervisor.control import BadRequest, Control, field
from llmling.supervisor.router import Router

Message = dict[str, Any]


class RestartRequests:
    def __init__(
        self,
        control: Control,
        router: Router,
        grace: float,
        spawn_task: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
    ) -> None:
        self._router = router
        self._grace = grace
        self._spawn_task = spawn_task
        control.register("restart", self._on_restart)

    def _on_restart(self, peer: Peer, message: Message) -> None:
        agent = field(message, "agent", str)
        if not self._router.accepting:
            raise BadRequest("the system is shutting down")
        self._router.slot(agent)
        self._spawn_task(self._restart(peer, message, agent))

    async def _restart(self, peer: Peer, message: Message, agent: str) -> None:
        slot = self._router.slot(agent)
        try:
            await slot.restart(self._grace)
        except LLMlingError as exc:
            peer.reply(message, {"t": "error", "error": str(exc)})
            return
        if slot.state != "ready":
            peer.reply(message, {"t": "error", "error": f"agent {agent!r} did not start: {slot.last_error}"})
            return
        peer.reply(message, {"t": "ok", "agent": slot.status()})


__all__ = ["RestartRequests"]
