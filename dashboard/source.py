"""The dashboard's connection to a system: one control-socket connection carrying the event subscription and
the dashboard's requests. When the system goes away it reconnects, every RECONNECT_S seconds, until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from typing import Any

from loguru import logger

from llmling.ipc.peer import Peer, PeerClosed, RemoteError, connect

Message = dict[str, Any]
RECONNECT_S = 1.0
# Seconds a request waits for its reply (a `send` waits for the run: REQUEST_TIMEOUT_S at most).
REQUEST_TIMEOUT_S = 60.0


class SourceError(Exception):
    """A request could not be answered: no connection, an `error` reply (its text), or no reply in time."""


class ControlSource:
    """Feeds `on_event` with the system's events (a `connected` / `disconnected` event when that changes)."""

    def __init__(self, path: str | os.PathLike[str], on_event: Callable[[Message], None]) -> None:
        self.path = path
        self._on_event = on_event
        # Invariant: the open connection, or None between connections.
        self._peer: Peer | None = None
        self.log = logger.bind(agent="dashboard")

    @property
    def connected(self) -> bool:
        return self._peer is not None and self._peer.is_open

    async def run(self) -> None:
        """Subscribe, and again after each loss of the system, until cancelled."""
        announced = False
        while True:
            try:
                peer = await connect(self.path, lambda peer, message: None)
            except OSError:
                if not announced:
                    self.log.warning("no system on {}; retrying every {} s", self.path, RECONNECT_S)
                    announced = True
                await asyncio.sleep(RECONNECT_S)
                continue
            announced = False
            self._peer = peer
            try:
                subscription = peer.start_request({"t": "subscribe", "batch": True}, self._on_chunk)
                with contextlib.suppress(PeerClosed, ConnectionError):
                    reply = await subscription
                    if reply.get("t") == "error":
                        self.log.error("the system refused the subscription: {}", reply.get("error"))
                await peer.wait_closed()
            finally:
                self._peer = None
                peer.close()
            self._on_event({"event": "disconnected"})
            await asyncio.sleep(RECONNECT_S)

    def _on_chunk(self, chunk: Message) -> None:
        """One event (`event`), or several in order (`events`: the subscription asks for batches)."""
        events = chunk.get("events")
        for event in events if isinstance(events, list) else (chunk.get("event"),):
            if isinstance(event, dict):
                self._on_event(event)

    async def request(self, message: Message, timeout: float = REQUEST_TIMEOUT_S) -> Message:
        """The final reply to `message`. Raises SourceError."""
        peer = self._peer
        if peer is None or not peer.is_open:
            raise SourceError("not connected to the system")
        sent = dict(message)
        try:
            async with asyncio.timeout(timeout):
                return await peer.request(sent)
        except RemoteError as exc:
            raise SourceError(str(exc)) from None
        except (PeerClosed, ConnectionError):
            raise SourceError("lost the system") from None
        except TimeoutError:
            peer.forget(str(sent.get("id")))
            raise SourceError(f"no reply from the system within {timeout:g} s") from None


__all__ = ["ControlSource", "SourceError"]
