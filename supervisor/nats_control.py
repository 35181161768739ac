"""Control requests over NATS: remote clients (`llmling send --nats URL --name SYSTEM`, ...) reach the supervisor
on the core NATS subject `<stream>.<system>.control`.

A NATS request is one JSON frame body (the same messages as on the control socket, see ipc/messages.py) with a
reply inbox. Each request gets its own `NatsPeer`: a `Peer` whose transport publishes every frame the handlers
write to that inbox, in order; so the very handlers of the control socket (`Control` and the requests the
services register) answer it, none is duplicated. A final (non-`chunk`) reply ends the request.

Limits (in the spirit of ipc/server.py's for socket clients):
- at most `MAX_REQUESTS` requests open at once (e.g. sends waiting for their result) and, among them, at most
  `MAX_SUBSCRIBERS` long-lived ones (`subscribe`, `logs --follow`); more are answered with an `error`;
- a request's frames not yet handed to NATS above `MAX_UNSENT` bytes drop the request (the event stream drops
  events long before, above `events.BUFFER_LIMIT`); a reply above the server's `max_payload` is replaced by an
  `error` reply (the socket's size rule, with NATS' limit);
- liveness: every `PROBE_INTERVAL` s each long-lived request's inbox is sent an empty request; a client that
  is gone (no responders) is dropped; one that does not answer within `PROBE_TIMEOUT` s (gone, or too slow to
  read its events) is dropped with a final `error` frame saying so.
When the control closes (the system has ended), each open request and each earlier `stop` request gets a
final `{"t": "stopped"}` frame, so a remote `watch` ends and a remote `stop` knows the system is gone.

Who may publish to the control subject is up to the NATS server's permissions (see README, "Across hosts").
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import TYPE_CHECKING, Any

from loguru import logger

from llmling.ipc.frames import HEADER, FrameError, Message, decode, encode_body
from llmling.ipc.nats_subjects import Subjects
from llmling.ipc.peer import Peer

if TYPE_CHECKING:
    from nats.aio.client import Client as Nats
    from nats.aio.msg import Msg

    from llmling.supervisor.control import Control

# Requests open at once (a send waiting for its result, a subscription, ...).
MAX_REQUESTS = 128
# Long-lived requests (`subscribe`, `logs` with `follow`) among them.
MAX_SUBSCRIBERS = 32
# Bytes of one request's frames not yet handed to NATS before it is dropped.
MAX_UNSENT = 4 * 1024 * 1024
# Seconds between liveness probes of long-lived requests, and how long a probe may take.
PROBE_INTERVAL = 5.0
PROBE_TIMEOUT = 5.0
# Earlier `stop` requests told `stopped` when the control closes (the most recent ones).
MAX_STOP_WAITERS = 64
# Incoming requests the control subscription buffers before NATS drops them (a flood).
PENDING_REQUESTS = 4096
PENDING_BYTES = 32 * 1024 * 1024
# Seconds the control waits at close for its last frames to reach the NATS server.
CLOSE_FLUSH = 2.0

_log = logger.bind(agent="supervisor")


class _Outbox(asyncio.Transport):
    """A NatsPeer's transport: each frame written becomes one message to the request's reply inbox, published
    in order by the control's sender task."""

    def __init__(self, control: NatsControl, inbox: str) -> None:
        super().__init__()
        self._control = control
        self.inbox = inbox
        self.peer: NatsPeer | None = None
        # Invariant: bytes of this outbox's frames queued and not yet handed to NATS.
        self.unsent = 0
        self.closing = False
        # Invariant: True once aborted: frames still queued are skipped.
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """`data` holds whole frames (one from `Peer.send`, several from `Peer.send_encoded`): each frame's
        body becomes one message."""
        if self.closing:
            return
        view, offset = memoryview(data), 0
        while offset < len(view):
            (size,) = HEADER.unpack_from(view, offset)
            body = bytes(view[offset + HEADER.size : offset + HEADER.size + size])
            offset += HEADER.size + size
            self.unsent += len(body)
            if self.unsent > MAX_UNSENT:
                _log.warning("dropping a NATS client that does not read ({} bytes unsent)", self.unsent)
                self.abort()
                return
            self._control.enqueue(self, body)

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self._control.enqueue(self, None)  # after its last frame: the peer is closed

    def abort(self) -> None:
        if not self.aborted:
            self.closing = self.aborted = True
            self.lost()

    def lost(self) -> None:
        peer, self.peer = self.peer, None
        if peer is not None:
            peer.connection_lost(None)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default  # no socket: no peer credentials (NATS permissions decide who may ask)


class NatsPeer(Peer):
    """One NATS request, as the control handlers see a client: replies go to its inbox; a final reply (any
    type but `chunk`) ends it."""

    __slots__ = ("inbox", "long_lived", "request_id")

    def __init__(
        self, control: NatsControl, inbox: str, request_id: str, long_lived: bool, max_frame: int
    ) -> None:
        super().__init__(_no_message, control._peer_closed, max_frame)
        self.inbox = inbox
        self.request_id = request_id
        self.long_lived = long_lived

    def send(self, message: Message) -> None:
        super().send(message)
        if message.get("t") != "chunk":
            self.close()


def _no_message(peer: Peer, message: Message) -> None:  # a NatsPeer never reads: requests come as messages
    return None


class NatsControl:
    """Serves `control`'s requests on `subjects.control` over the supervisor's NATS connection (`NatsLink`'s,
    which reconnects and re-subscribes by itself). `start(nats)` subscribes; `close()` ends every open request
    and unsubscribes, before the connection closes. Owns its two tasks (the sender and the prober)."""

    def __init__(self, control: Control, subjects: Subjects) -> None:
        self._control = control
        self.subjects = subjects
        self._nats: Nats | None = None
        # Invariant: True from close() on: no new request is taken.
        self._closed = False
        self._subscription: Any = None
        # Invariant: (outbox, frame body) in publishing order; a None body closes the outbox's peer.
        self._queue: asyncio.Queue[tuple[_Outbox, bytes | None]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        # Invariant: holds exactly the requests that have not ended.
        self.peers: set[NatsPeer] = set()
        # (inbox, request id) of the latest `stop` requests: told `stopped` at close.
        self._stop_waiters: deque[tuple[str, str]] = deque(maxlen=MAX_STOP_WAITERS)
        self.refused = {"over_cap": 0, "probe": 0, "bad_frame": 0}

    @property
    def subscribers(self) -> int:
        return sum(1 for peer in self.peers if peer.long_lived)

    async def start(self, nats: Nats | None) -> None:
        assert nats is not None, "the NATS connection is up before the control starts"
        self._nats = nats
        self._tasks = [
            asyncio.create_task(self._send_loop(), name="nats-control-send"),
            asyncio.create_task(self._probe_loop(), name="nats-control-probe"),
        ]
        self._subscription = await self._nats.subscribe(
            self.subjects.control,
            cb=self._on_request,
            pending_msgs_limit=PENDING_REQUESTS,
            pending_bytes_limit=PENDING_BYTES,
        )
        _log.info("control requests also on NATS subject {}", self.subjects.control)

    # -- requests -----------------------------------------------------------------------------------------
    async def _on_request(self, msg: Msg) -> None:
        try:
            self._handle(msg)
        except Exception:  # a bug: this request fails, the others and the system go on
            _log.exception("failed to handle a NATS control request")

    def _handle(self, msg: Msg) -> None:
        nats = self._nats
        if not msg.reply or nats is None or self._closed:
            return  # nowhere to answer (a plain publish)
        try:
            message = decode(msg.data)
        except FrameError as exc:
            self.refused["bad_frame"] += 1
            self._answer(msg.reply, {"t": "error", "error": f"protocol error: {exc}"})
            return
        request_id = message.get("id")
        kind = message.get("t")
        long_lived = kind == "subscribe" or (kind == "logs" and message.get("follow") is True)
        refusal = None
        if len(self.peers) >= MAX_REQUESTS:
            refusal = f"too many NATS requests at once: the limit is {MAX_REQUESTS}"
        elif long_lived and self.subscribers >= MAX_SUBSCRIBERS:
            refusal = f"too many NATS subscribers: the limit is {MAX_SUBSCRIBERS}"
        if refusal is not None:
            self.refused["over_cap"] += 1
            self._answer(msg.reply, {"t": "error", "re": request_id, "error": refusal})
            return
        peer = NatsPeer(self, msg.reply, str(request_id), long_lived, nats.max_payload)
        outbox = _Outbox(self, msg.reply)
        outbox.peer = peer
        peer.connection_made(outbox)
        self.peers.add(peer)
        if kind == "stop" and isinstance(request_id, str):
            self._stop_waiters.append((msg.reply, request_id))
        try:
            self._control.handle(peer, message)
        except Exception as exc:  # a bug in a handler: this request ends, the others go on
            _log.opt(exception=exc).error("failed to handle a {!r} request over NATS", kind)
            peer.send({"t": "error", "re": request_id, "error": f"internal error: {type(exc).__name__}"})

    def _answer(self, inbox: str, message: Message) -> None:
        """One frame to `inbox` outside any request (a refusal, `stopped`)."""
        outbox = _Outbox(self, inbox)
        body = encode_body(message)
        outbox.write(HEADER.pack(len(body)) + body)
        outbox.close()

    def _peer_closed(self, peer: Peer, exc: Exception | None) -> None:
        self.peers.discard(peer)  # type: ignore[arg-type]

    # -- publishing -----------------------------------------------------------------------------------------
    def enqueue(self, outbox: _Outbox, body: bytes | None) -> None:
        self._queue.put_nowait((outbox, body))

    async def _send_loop(self) -> None:
        while True:
            outbox, body = await self._queue.get()
            try:
                if body is None:
                    outbox.lost()
                    continue
                if outbox.aborted:
                    continue
                outbox.unsent -= len(body)
                assert self._nats is not None
                try:
                    await self._nats.publish(outbox.inbox, body)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # NATS lost for long (its buffer is full), or a closed connection
                    _log.warning("NATS control: cannot answer {}: {}", outbox.inbox, type(exc).__name__)
                    outbox.abort()
            finally:
                self._queue.task_done()

    # -- liveness ---------------------------------------------------------------------------------------------
    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            long_lived = [peer for peer in self.peers if peer.long_lived and peer.is_open]
            if long_lived:
                await asyncio.gather(*(self._probe(peer) for peer in long_lived))

    async def _probe(self, peer: NatsPeer) -> None:
        """Ask `peer`'s inbox whether anyone still reads it; drop the peer when not. Never raises."""
        from nats.errors import ConnectionClosedError, NoRespondersError
        from nats.errors import Error as NatsError
        from nats.errors import TimeoutError as NatsTimeout

        if self._nats is None or not peer.is_open:
            return
        try:
            await self._nats.request(peer.inbox, b"", timeout=PROBE_TIMEOUT)
        except NoRespondersError:
            self.refused["probe"] += 1
            _log.info("dropping a NATS subscriber (gone)")
            peer.abort()
        except NatsTimeout:  # gone, or too slow to read its frames: told why, in case it is still there
            self.refused["probe"] += 1
            why = f"no answer to the liveness probe within {PROBE_TIMEOUT:g} s"
            _log.info("dropping a NATS subscriber ({})", why)
            peer.send({"t": "error", "re": peer.request_id, "error": f"dropped: {why}"})
        except (ConnectionClosedError, OSError):
            return  # our side is down: the reconnect decides, not the client
        except (NatsError, ValueError) as exc:  # anything else of NATS: this probe is skipped, not the loop
            _log.warning("NATS control: probe of a subscriber failed: {}", type(exc).__name__)

    # -- closing ----------------------------------------------------------------------------------------------
    async def close(self) -> None:
        """Stop answering; tell every open request and earlier `stop` that the system stopped (idempotent)."""
        nats = self._nats
        if nats is None or self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            if self._subscription is not None:
                await self._subscription.unsubscribe()
        for peer in list(self.peers):
            if peer.is_open:
                peer.send({"t": "stopped", "re": peer.request_id})
        for inbox, request_id in self._stop_waiters:
            self._answer(inbox, {"t": "stopped", "re": request_id})
        with contextlib.suppress(Exception):  # a timeout, or a connection that is already closed
            async with asyncio.timeout(CLOSE_FLUSH):
                await self._queue.join()
                await nats.flush(timeout=CLOSE_FLUSH)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for peer in list(self.peers):
            peer.abort()


__all__ = ["MAX_REQUESTS", "MAX_SUBSCRIBERS", "NatsControl", "NatsPeer"]
