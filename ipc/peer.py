"""One end of a framed connection, as an asyncio Protocol.

`data_received` is synchronous and cheap: feed the decoder, resolve a waiting request, or hand the message to
the owner's callback. Replies carry `re` (the id of the request they answer); a reply whose type is `chunk`
is one item of a stream and keeps the request open, any other reply completes it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

from loguru import logger

from llmling.ipc.frames import DEFAULT_MAX_FRAME, HEADER, FrameDecoder, FrameError, FrameTooLarge, Message, encode

OnMessage = Callable[["Peer", Message], None]
OnChunk = Callable[[Message], None]

# Seconds a connection closed after an error frame gets to take it before it is aborted.
CLOSE_GRACE = 2.0
# Seconds `connect` keeps trying a listener whose backlog is full before it gives up.
CONNECT_BUSY_WAIT = 10.0

_ids = itertools.count(1)
_id_prefix = f"{os.getpid():x}-"


def _reset_ids() -> None:
    global _ids, _id_prefix
    _ids = itertools.count(1)
    _id_prefix = f"{os.getpid():x}-"


os.register_at_fork(after_in_child=_reset_ids)


def new_id() -> str:
    """A message id unique within this process and across live processes (pid prefix, reset on fork)."""
    return _id_prefix + str(next(_ids))


class PeerClosed(ConnectionError):
    """The connection closed while a request was waiting for its reply."""


class RemoteError(Exception):
    """The other end answered a request with an error frame."""

    def __init__(self, message: Message) -> None:
        super().__init__(message.get("error", "remote error"))
        self.message = message


class _Pending:
    __slots__ = ("future", "on_chunk")

    def __init__(self, future: asyncio.Future[Message], on_chunk: OnChunk | None) -> None:
        self.future = future
        self.on_chunk = on_chunk


class Peer(asyncio.Protocol):
    """A framed, request-correlating connection. The owner decides what messages mean.

    Invariant: only `send` and `send_encoded` write to the transport, whole frames per call, so frames never
    interleave; and no frame larger than `max_frame` is written (a reply that would be is replaced by an `error`
    reply).
    """

    __slots__ = (
        "_closed",
        "_decoder",
        "_drain_waiter",
        "_max_frame",
        "_on_close",
        "_on_message",
        "_paused",
        "_pending",
        "credentials",
        "info",
        "transport",
    )

    def __init__(
        self,
        on_message: OnMessage,
        on_close: Callable[[Peer, Exception | None], None] | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> None:
        self._on_message = on_message
        self._on_close = on_close
        self._decoder = FrameDecoder(max_frame)
        self._max_frame = max_frame
        self._pending: dict[str, _Pending] = {}
        self._paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        # (pid, uid, gid) of the process at the other end, from SO_PEERCRED.
        self.credentials: tuple[int, int, int] = (0, -1, -1)
        # Free for the owner: what this peer is (a client, an agent, ...).
        self.info: Any = None

    # -- asyncio.Protocol -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family == socket.AF_UNIX:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            self.credentials = struct.unpack("3i", raw)

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._decoder.feed(data)
        except FrameError as exc:
            self.send({"t": "error", "error": f"protocol error: {exc}"})
            self.abort(exc)
            return
        for message in messages:
            if not self.is_open or not self.admit(message):
                return
            try:
                self._dispatch(message)
            except Exception as exc:  # a bug in the owner: this connection ends, the process goes on
                logger.bind(agent="ipc").opt(exception=exc).error(
                    "failed to handle a {!r} frame", message.get("t")
                )
                self.send({"t": "error", "error": f"internal error: {type(exc).__name__}"})
                self.abort(exc)
                return

    def admit(self, message: Message) -> bool:
        """Whether `message` may be handled; a subclass that says no closes the connection itself."""
        return True

    def _dispatch(self, message: Message) -> None:
        reply_to = message.get("re")
        if reply_to is not None:
            pending = self._pending.get(reply_to)
            if pending is not None:
                if message.get("t") == "chunk":  # keeps the request open (dropped when nobody takes chunks)
                    if pending.on_chunk is not None:
                        pending.on_chunk(message)
                    return
                del self._pending[reply_to]
                if not pending.future.done():
                    pending.future.set_result(message)
                return
        self._on_message(self, message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        error = PeerClosed("connection closed")
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(error)
        self._pending.clear()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(error)
        if not self._closed.done():
            self._closed.set_result(None)
        if self._on_close is not None:
            self._on_close(self, exc)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- sending ----------------------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def send(self, message: Message) -> None:
        """Queue one frame. Silently dropped once the connection is closing.

        A frame over `max_frame` is never written: a reply (it has `re`) is replaced by an `error` reply naming the
        size, so the request fails cleanly at the other end; any other frame raises FrameTooLarge.
        """
        if self.transport is None or self.transport.is_closing():
            return
        frame = encode(message)
        size = len(frame) - HEADER.size
        if size > self._max_frame:
            reply_to = message.get("re")
            if not isinstance(reply_to, str):
                raise FrameTooLarge(size, self._max_frame)
            error = f"reply too large: {size} bytes, limit {self._max_frame}"
            logger.bind(agent="ipc").warning("{} (a {!r} frame); sent an error instead", error, message.get("t"))
            frame = encode({"t": "error", "re": reply_to, "error": error, "kind": "error"})
        self.transport.write(frame)

    def send_encoded(self, frames: bytes) -> None:
        """Queue whole frames encoded by the caller (each within `max_frame`: the caller's to check), in one
        write. Silently dropped once the connection is closing."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frames)

    async def drain(self) -> None:
        """Wait while the transport's write buffer is above its high-water mark."""
        if not self._paused:
            return
        if self._drain_waiter is None:
            self._drain_waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._drain_waiter)

    def reply(self, request: Message, message: Message) -> None:
        message["re"] = request["id"]
        self.send(message)

    def start_request(self, message: Message, on_chunk: OnChunk | None = None) -> asyncio.Future[Message]:
        """Send `message` with a fresh id; the future completes with the final reply (chunks go to on_chunk)."""
        if not self.is_open:
            raise PeerClosed("connection closed")
        message_id = message.setdefault("id", new_id())
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = _Pending(future, on_chunk)
        self.send(message)
        return future

    async def request(self, message: Message, on_chunk: OnChunk | None = None) -> Message:
        """Send and await the final reply; an `error` reply raises RemoteError."""
        reply = await self.start_request(message, on_chunk)
        if reply.get("t") == "error":
            raise RemoteError(reply)
        return reply

    def forget(self, message_id: str) -> None:
        self._pending.pop(message_id, None)

    # -- closing ----------------------------------------------------------------------------------------
    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self, exc: Exception | None = None) -> None:
        if self.transport is not None:
            self.transport.abort()

    def close_with_error(self, error: str) -> None:
        """Send one `error` frame, then close; a peer that does not take it within CLOSE_GRACE s is aborted."""
        self.send({"t": "error", "error": error})
        self.close()
        if self.transport is not None:
            asyncio.get_running_loop().call_later(CLOSE_GRACE, self.abort)

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)


async def connect(
    path: str | os.PathLike[str], on_message: OnMessage, busy_wait: float = CONNECT_BUSY_WAIT, **kwargs: Any
) -> Peer:
    """Connect to a Unix socket server; raises OSError when nobody listens there.

    A listener whose backlog is full (EAGAIN: it is flooded, or paused while its descriptors run short) is
    tried again, backing off, for up to `busy_wait` seconds: it is there, only busy.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + busy_wait
    delay = 0.01
    while True:
        try:
            _, peer = await loop.create_unix_connection(lambda: Peer(on_message, **kwargs), os.fspath(path))
            return peer
        except BlockingIOError:
            if loop.time() + delay > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
