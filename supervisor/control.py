"""The control socket's client side of the protocol.

A request is a frame with `t` and `id`; it is answered with one final frame carrying `re`: `result`,
`status`, `ok` or `error`, possibly preceded by `chunk` frames. Handlers are registered by request type, so
each capability (sends, triggers, background runs, ...) owns its own requests. Bad requests get an `error`
naming the field.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from llmling.errors import AgentRunError, LLMlingError
from llmling.ipc.frames import PromptTooLarge, check_prompt_size
from llmling.ipc.peer import Peer
from llmling.supervisor.journal import Unit
from llmling.supervisor.router import Router

Message = dict[str, Any]
# A handler answers with peer.reply(...) itself, now or later (from a task it starts).
Handler = Callable[[Peer, Message], None]


class BadRequest(LLMlingError):
    """A client request is malformed; the message names the field."""


def field(message: Message, name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    """The value of `name` in `message`, checked against `kind`. Raises BadRequest naming the field."""
    if name not in message and default is not ...:
        return default
    value = message.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise BadRequest(f"field {name!r} must be of type {names}")
    return value


class Control:
    def __init__(
        self,
        router: Router,
        status: Callable[[], Message],
        request_stop: Callable[[], None],
        spawn_task: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
    ) -> None:
        self._router = router
        self._status = status
        self._request_stop = request_stop
        self._spawn_task = spawn_task
        self._handlers: dict[str, Handler] = {}
        self.register("send", self._send)
        self.register("status", lambda peer, message: peer.reply(message, {"t": "status", **self._status()}))
        self.register("stop", self._stop)
        self.register("ping", lambda peer, message: peer.reply(message, {"t": "pong"}))

    def register(self, kind: str, handler: Handler) -> None:
        if kind in self._handlers:
            raise ValueError(f"request type {kind!r} is already handled")
        self._handlers[kind] = handler

    def handle(self, peer: Peer, message: Message) -> None:
        if not isinstance(message.get("id"), str):
            peer.send({"t": "error", "error": "field 'id' must be of type str"})
            return
        handler = self._handlers.get(message.get("t"))  # type: ignore[arg-type]
        try:
            if handler is None:
                raise BadRequest(f"field 't': unknown request type {message.get('t')!r}")
            handler(peer, message)
        except AgentRunError as exc:  # e.g. busy: refused before anything was accepted
            peer.reply(message, {"t": "error", **exc.reply_fields(), "error": str(exc), "agent": exc.agent})
        except LLMlingError as exc:
            peer.reply(message, {"t": "error", "error": str(exc)})

    def _stop(self, peer: Peer, message: Message) -> None:
        peer.reply(message, {"t": "ok"})
        self._request_stop()

    def _send(self, peer: Peer, message: Message) -> None:
        agent = field(message, "agent", str)
        prompt = field(message, "prompt", str)
        try:
            check_prompt_size(prompt)  # refused here, before a run exists: it could never reach the agent
        except PromptTooLarge as exc:
            raise BadRequest(str(exc)) from None
        if not self._router.accepting:
            raise BadRequest("the system is shutting down")
        self._router.slot(agent).check_capacity()  # AgentBusyError: refused at once, never acknowledged
        self._spawn_task(self._run_send(peer, message, agent, prompt))

    async def _run_send(self, peer: Peer, message: Message, agent: str, prompt: str) -> None:
        on_chunk = None
        if message.get("stream"):

            def on_chunk(chunk: Message) -> None:
                peer.reply(message, {"t": "chunk", "text": chunk.get("text", "")})

        def on_accepted(unit: Unit) -> None:
            # The first frame: the run is journaled (or, with durability off, started); it will reach an
            # outcome even if this client goes away.
            peer.reply(message, {"t": "chunk", "accepted": {"id": unit.id, "trace_id": unit.trace_id}})

        try:
            result, trace = await self._router.send(
                agent, prompt, on_chunk, source="send", on_accepted=on_accepted
            )
            if message.get("wait"):
                await trace.done.wait()
                result = {**result, "downstream": trace.results}
            peer.reply(message, {"t": "result", **result})
        except AgentRunError as exc:
            peer.reply(message, {"t": "error", **exc.reply_fields(), "error": str(exc), "agent": exc.agent})
        except LLMlingError as exc:
            peer.reply(message, {"t": "error", "error": str(exc)})
