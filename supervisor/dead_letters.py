"""The control requests of dead letters: list them, deliver them again (`retry`), purge them.

A dead letter is a journaled unit in state `dead`: its attempts are exhausted, its failure is not retried,
or its agent could not take it. It keeps its run id, prompt, trace and reason; `retry` moves it back to
`queued` with a fresh attempt budget and delivers it again under the same id.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from llmling.errors import LLMlingError, UnknownAgentError
from llmling.ipc.peer import Peer
from llmling.supervisor.control import BadRequest, field
from llmling.supervisor.journal import MAX_LISTED, Journal

if TYPE_CHECKING:
    from llmling.supervisor.system import Supervisor

Message = dict[str, Any]
# At most this many ids in one `retry` request.
MAX_IDS = 1000
# A listed dead letter's prompt is cut to this many characters (the whole prompt stays in the journal).
PROMPT_SHOWN = 2000


class DeadLetters:
    """Registers `dead_letters`, `retry` and `dead_letters_purge`. Without a journal they answer an error."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor
        self._journal = supervisor.journal
        self._spawn: Callable[[Coroutine[Any, Any, Any]], Any] = supervisor.spawn_request
        control = supervisor.control
        control.register("dead_letters", lambda peer, message: self._answer(peer, message, self._list))
        control.register("retry", lambda peer, message: self._answer(peer, message, self._retry))
        control.register("dead_letters_purge", lambda peer, message: self._answer(peer, message, self._purge))

    def _answer(
        self, peer: Peer, message: Message, handler: Callable[[Journal, Message], Coroutine[Any, Any, Message]]
    ) -> None:
        journal = self._journal
        if journal is None:
            raise BadRequest("this system keeps no journal (durability: off): there are no dead letters")
        agent = field(message, "agent", (str, type(None)), None)
        if agent is not None and agent not in self._supervisor.slots:
            raise UnknownAgentError(f"unknown agent {agent!r}")

        async def answer() -> None:
            try:
                peer.reply(message, {"t": "ok", **await handler(journal, message)})
            except LLMlingError as exc:
                peer.reply(message, {"t": "error", "error": str(exc)})

        self._spawn(answer())

    async def _list(self, journal: Journal, message: Message) -> Message:
        units = await journal.dead_letters(message.get("agent"), MAX_LISTED + 1)
        letters = []
        for unit in units[:MAX_LISTED]:
            info = unit.info()
            if len(info["prompt"]) > PROMPT_SHOWN:
                info["prompt"] = info["prompt"][:PROMPT_SHOWN] + "…"
            letters.append(info)
        reply: Message = {"dead_letters": letters, "path": str(journal.path)}
        if len(units) > MAX_LISTED:
            reply["truncated"] = True
        return reply

    async def _retry(self, journal: Journal, message: Message) -> Message:
        ids = field(message, "ids", (list, type(None)), None)
        if ids is not None and (not ids or len(ids) > MAX_IDS or not all(isinstance(i, str) for i in ids)):
            raise BadRequest(f"field 'ids' must be a list of 1 to {MAX_IDS} run ids")
        if not self._supervisor.router.accepting:
            raise BadRequest("the system is shutting down")
        units = await journal.revive(ids, message.get("agent"))
        if ids is not None and not units:
            raise BadRequest(f"no dead letter with id {', '.join(ids)}")
        self._supervisor.router.resume(units)
        return {"retried": [unit.id for unit in units]}

    async def _purge(self, journal: Journal, message: Message) -> Message:
        return {"purged": await journal.purge(message.get("agent"))}
