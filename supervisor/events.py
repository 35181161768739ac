"""The event stream of a running system, for `llmling watch` and any other client.

`{"t":"subscribe","id"[,"agents":[...]][,"batch":true]}` opens a subscription: the supervisor answers with
`chunk` frames carrying `re` = the request's id and one `event` each (the first is `subscribed`, with the
system's status), until the client disconnects. With `batch`, a chunk may carry `events` (a list, in order)
instead: what happened since the last write, in one frame (the dashboard asks for it: one encoding and one
frame for many events on both sides). No final frame is sent; the stream ends when either side closes.

A slow subscriber never slows the system: events are written without waiting, and while a subscriber's
unsent bytes exceed `BUFFER_LIMIT` its events are dropped and counted; the next event that fits is preceded
by `{"event":"dropped","count":N}`.

The run events (the bulk: two per run) cost the run's path only a shallow copy: they are encoded once for
every subscriber, and written to each in one write, FLUSH_S later (a dashboard or `watch` on a busy system
wakes up 1/FLUSH_S times a second, not per event). Any other event flushes them and itself at once, in order.

A batch leaves out the `run_started` of a run whose `run_finished` (same id and attempt) is in the same batch:
the outcome carries everything the start does (agent, ids, parent, prompt, attempt; its start is `ts` minus
`elapsed_total`), so a fast run costs one event, not two, to encode, send and read. One-event chunks (`watch`)
keep both.

In-process readers (`add_reader`: the telemetry service, which hands them to its worker process) take the same
batches as the subscribers without an agent filter: one encoding of a batch serves the dashboard and the
telemetry worker.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any, Protocol

from loguru import logger

from llmling.errors import UnknownAgentError
from llmling.ipc.frames import DEFAULT_MAX_FRAME, HEADER, encode_body
from llmling.ipc.peer import Peer
from llmling.names import unknown
from llmling.observe.runs import RUN_EVENTS
from llmling.supervisor.control import BadRequest, field

if TYPE_CHECKING:
    from llmling.supervisor.system import Supervisor

Message = dict[str, Any]
# Unsent bytes a subscriber may have queued before its events are dropped.
BUFFER_LIMIT = 1 << 20
# Seconds a run event waits before it is written to the subscribers, with the others of that time.
FLUSH_S = 0.05
# The events that wait for the flush (any other is written at once, after those waiting).
BATCHED = RUN_EVENTS | {"run_retry"}


class BatchReader(Protocol):
    """An in-process reader of every event, in batches."""

    def take(self, body: bytes, count: int) -> None:
        """`body`: the JSON list of `count` events, in order (the same bytes every reader gets); never raises."""


def coalesced(events: list[Message]) -> list[Message]:
    """`events` without each `run_started` whose `run_finished` (same id and attempt) is among them."""
    finished = {(e.get("id"), e.get("attempt")) for e in events if e.get("event") == "run_finished"}
    if not finished:
        return events
    return [
        e for e in events if e.get("event") != "run_started" or (e.get("id"), e.get("attempt")) not in finished
    ]


class Subscription:
    __slots__ = ("_pending", "_pending_bytes", "_prefix", "agents", "batch", "dropped", "peer", "request")

    def __init__(self, peer: Peer, request: Message, agents: frozenset[str] | None, batch: bool = False) -> None:
        self.peer = peer
        self.request = request
        self.agents = agents
        # Whether it takes chunks of several events (`events`).
        self.batch = batch
        # Invariant: events dropped since the last one delivered.
        self.dropped = 0
        # A frame of this subscription is its length, _prefix, the event's JSON and "}" (a batch: `events`).
        self._prefix = b'{"t":"chunk","re":' + json.dumps(request["id"]).encode() + b',"event'
        # Invariant: whole frames queued and not yet written (written by flush, in one call); their size in bytes.
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    def wants(self, event: Message) -> bool:
        if self.agents is None:
            return True
        agent = event.get("agent")
        return agent is None or agent in self.agents

    def offer(self, event: Message, limit: int) -> None:
        """Write `event` now (after what is queued)."""
        self.queue(encode_body(event), limit)
        self.flush()

    def queue(self, body: bytes, limit: int, count: int = 0) -> bool:
        """Queue the frame of an event already encoded (`body`; with `count`, of a list of that many events), or
        count it dropped when the subscriber's unsent bytes are over `limit`. False (nothing done) when the frame
        would be over the frame limit."""
        transport = self.peer.transport
        if transport is None:
            return True
        size = len(self._prefix) + len(body) + 4
        if size > DEFAULT_MAX_FRAME:
            if not count:
                self.dropped += 1
            return False
        if transport.get_write_buffer_size() + self._pending_bytes > limit:
            self.dropped += count or 1
            return True
        if self.dropped:
            self._add(b'":', encode_body({"event": "dropped", "count": self.dropped}))
            self.dropped = 0
        self._add(b's":' if count else b'":', body)
        return True

    def _add(self, key_end: bytes, body: bytes) -> None:
        length = len(self._prefix) + len(key_end) + len(body) + 1
        frame = b"".join((HEADER.pack(length), self._prefix, key_end, body, b"}"))
        self._pending.append(frame)
        self._pending_bytes += len(frame)

    def flush(self) -> None:
        if self._pending:
            frames, self._pending, self._pending_bytes = self._pending, [], 0
            self.peer.send_encoded(b"".join(frames))


class EventStream:
    """Feeds every supervisor event to the subscribed clients."""

    def __init__(self, supervisor: Supervisor, limit: int = BUFFER_LIMIT) -> None:
        self._supervisor = supervisor
        self.limit = limit
        self.subscriptions: list[Subscription] = []
        self.readers: list[BatchReader] = []
        # Invariant: events stamped and not yet written to the subscribers, oldest first; a flush is scheduled
        # (_flush_handle) whenever it is not empty.
        self._pending: list[Message] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        supervisor.add_listener(self._on_event)
        supervisor.control.register("subscribe", self._on_subscribe)

    def add_reader(self, reader: BatchReader) -> None:
        """Give `reader` every event from now on, in the batches the subscribers get."""
        self.readers.append(reader)

    def _on_subscribe(self, peer: Peer, message: Message) -> None:
        agents = field(message, "agents", (list, type(None)), default=None)
        if agents is not None and not all(isinstance(agent, str) for agent in agents):
            raise BadRequest("field 'agents' must be a list of agent names")
        for agent in agents or ():
            if agent not in self._supervisor.slots:
                raise UnknownAgentError(unknown("agent", agent, self._supervisor.slots))
        batch = field(message, "batch", bool, default=False)
        self.flush()  # what happened before it subscribed is not its to see
        subscription = Subscription(peer, message, frozenset(agents) if agents is not None else None, batch)
        self.subscriptions.append(subscription)
        status = self._supervisor.status()
        subscription.offer({"event": "subscribed", "ts": time.time(), "status": status}, self.limit)

    def _on_event(self, event: Message) -> None:
        if not self.subscriptions and not self.readers:
            return
        self._pending.append({**event, "ts": time.time()})
        if event.get("event") not in BATCHED:
            self.flush()
        elif self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(FLUSH_S, self.flush)

    def flush(self) -> None:
        """Write the events waiting: each encoded once (a batch, once per agent filter), one write per
        subscriber."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        events, self._pending = self._pending, []
        self.subscriptions = [s for s in self.subscriptions if s.peer.is_open]
        if events:
            batch = coalesced(events)
            bodies: dict[int, bytes | None] = {}  # index in events → its JSON (None: not JSON)
            lists: dict[frozenset[str] | None, tuple[bytes | None, int]] = {}  # agent filter → its batch, length
            if self.readers:
                body, count = lists[None] = self._batch(batch, None)
                for reader in self.readers:
                    if body is not None:
                        reader.take(body, count)
            for subscription in self.subscriptions:
                if subscription.batch:
                    if subscription.agents not in lists:
                        lists[subscription.agents] = self._batch(batch, subscription)
                    body, count = lists[subscription.agents]
                    if not count or (body is not None and subscription.queue(body, self.limit, count)):
                        continue
                for i, event in enumerate(events):  # one frame each (`watch`; a batch too large for one frame)
                    if not subscription.wants(event):
                        continue
                    if i not in bodies:
                        bodies[i] = self._encode(event)
                    if (body := bodies[i]) is not None:
                        subscription.queue(body, self.limit)
        for subscription in self.subscriptions:
            subscription.flush()

    def _batch(self, events: list[Message], subscription: Subscription | None) -> tuple[bytes | None, int]:
        """The JSON list of the events `subscription` wants (None: every event), and how many that is (a list
        of none is not encoded)."""
        if subscription is None or subscription.agents is None:
            wanted = events
        else:
            wanted = [event for event in events if subscription.wants(event)]
        return (self._encode(wanted) if wanted else None), len(wanted)

    @staticmethod
    def _encode(value: Message | list[Message]) -> bytes | None:
        try:
            return encode_body(value)
        except (TypeError, ValueError) as exc:
            logger.bind(agent="supervisor").warning("an event is not JSON: {}", exc)
            return None


__all__ = ["BUFFER_LIMIT", "BatchReader", "EventStream", "Subscription", "coalesced"]
