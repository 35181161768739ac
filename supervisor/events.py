"""The event stream of a running system, for `llmling watch` and any other client.

`{"t":"subscribe","id"[,"agents":[...]]}` opens a subscription: the supervisor answers with `chunk` frames
carrying `re` = the request's id and one `event` each (the first is `subscribed`, with the system's status),
until the client disconnects. No final frame is sent; the stream ends when either side closes.

A slow subscriber never slows the system: events are written without waiting, and while a subscriber's
unsent bytes exceed `BUFFER_LIMIT` its events are dropped and counted; the next event that fits is preceded
by `{"event":"dropped","count":N}`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from loguru import logger

from llmling.errors import UnknownAgentError
from llmling.ipc.peer import Peer
from llmling.names import unknown
from llmling.supervisor.control import BadRequest, field

if TYPE_CHECKING:
    from llmling.supervisor.system import Supervisor

Message = dict[str, Any]
# Unsent bytes a subscriber may have queued before its events are dropped.
BUFFER_LIMIT = 1 << 20


class Subscription:
    __slots__ = ("agents", "dropped", "peer", "request")

    def __init__(self, peer: Peer, request: Message, agents: frozenset[str] | None) -> None:
        self.peer = peer
        self.request = request
        self.agents = agents
        # Invariant: events dropped since the last one delivered.
        self.dropped = 0

    def wants(self, event: Message) -> bool:
        if self.agents is None:
            return True
        agent = event.get("agent")
        return agent is None or agent in self.agents

    def offer(self, event: Message, limit: int) -> None:
        transport = self.peer.transport
        if transport is None:
            return
        if transport.get_write_buffer_size() > limit:
            self.dropped += 1
            return
        if self.dropped:
            self.peer.reply(self.request, {"t": "chunk", "event": {"event": "dropped", "count": self.dropped}})
            self.dropped = 0
        self.peer.reply(self.request, {"t": "chunk", "event": event})


class EventStream:
    """Feeds every supervisor event to the subscribed clients."""

    def __init__(self, supervisor: Supervisor, limit: int = BUFFER_LIMIT) -> None:
        self._supervisor = supervisor
        self.limit = limit
        self.subscriptions: list[Subscription] = []
        supervisor.add_listener(self._on_event)
        supervisor.control.register("subscribe", self._on_subscribe)

    def _on_subscribe(self, peer: Peer, message: Message) -> None:
        agents = field(message, "agents", (list, type(None)), default=None)
        if agents is not None and not all(isinstance(agent, str) for agent in agents):
            raise BadRequest("field 'agents' must be a list of agent names")
        for agent in agents or ():
            if agent not in self._supervisor.slots:
                raise UnknownAgentError(unknown("agent", agent, self._supervisor.slots))
        subscription = Subscription(peer, message, frozenset(agents) if agents is not None else None)
        self.subscriptions.append(subscription)
        status = self._supervisor.status()
        subscription.offer({"event": "subscribed", "ts": time.time(), "status": status}, self.limit)

    def _on_event(self, event: Message) -> None:
        if not self.subscriptions:
            return
        stamped = {**event, "ts": time.time()}
        for subscription in list(self.subscriptions):
            if not subscription.peer.is_open:
                self.subscriptions.remove(subscription)
                continue
            if not subscription.wants(stamped):
                continue
            try:
                subscription.offer(stamped, self.limit)
            except (TypeError, ValueError) as exc:
                logger.bind(agent="supervisor").warning("event {} is not JSON: {}", event.get("event"), exc)
                return


__all__ = ["BUFFER_LIMIT", "EventStream", "Subscription"]
