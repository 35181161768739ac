"""The control socket's client side of the protocol: `send`, `status`, `stop`, `ping`.

Each request is answered with one final frame carrying `re` (its id): `result`, `status`, `ok` or `error`.
A streaming `send` is preceded by `chunk` frames. Bad requests get an `error` naming the field.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from llmling.errors import AgentRunError, UnknownAgentError
from llmling.ipc.peer import Peer
from llmling.supervisor.router import Router

Message = dict[str, Any]


class BadRequest(Exception):
    pass


def _field(message: Message, name: str, kind: type) -> Any:
    value = message.get(name)
    if not isinstance(value, kind):
        expected = "a string" if kind is str else kind.__name__
        raise BadRequest(f"field {name!r} must be {expected}")
    return value


class Control:
    def __init__(
        self,
        router: Router,
        status: Callable[[], Message],
        request_stop: Callable[[], None],
        spawn_task: Callable[..., asyncio.Task[Any]],
    ) -> None:
        self._router = router
        self._status = status
        self._request_stop = request_stop
        self._spawn_task = spawn_task

    def handle(self, peer: Peer, message: Message) -> None:
        if "id" not in message:
            peer.send({"t": "error", "error": "field 'id' is required"})
            return
        kind = message.get("t")
        try:
            if kind == "send":
                agent = _field(message, "agent", str)
                prompt = _field(message, "prompt", str)
                if not self._router.accepting:
                    raise BadRequest("the system is shutting down")
                self._router.slot(agent)
                self._spawn_task(self._send(peer, message, agent, prompt))
            elif kind == "status":
                peer.reply(message, {"t": "status", **self._status()})
            elif kind == "stop":
                peer.reply(message, {"t": "ok"})
                self._request_stop()
            elif kind == "ping":
                peer.reply(message, {"t": "pong"})
            else:
                raise BadRequest(f"field 't': unknown request type {kind!r}")
        except (BadRequest, UnknownAgentError) as exc:
            peer.reply(message, {"t": "error", "error": str(exc)})

    async def _send(self, peer: Peer, message: Message, agent: str, prompt: str) -> None:
        on_chunk = None
        if message.get("stream"):

            def on_chunk(chunk: Message) -> None:
                peer.reply(message, {"t": "chunk", "text": chunk.get("text", "")})

        try:
            result, trace = await self._router.send(agent, prompt, on_chunk)
            if message.get("wait"):
                await trace.done.wait()
                result = {**result, "downstream": trace.results}
            peer.reply(message, {"t": "result", **result})
        except AgentRunError as exc:
            peer.reply(message, {"t": "error", "error": str(exc), "agent": exc.agent})
