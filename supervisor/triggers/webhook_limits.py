"""The connection limits of a webhook server: how many, from whom, and how long a request's head may take.

aiohttp's low-level server parses requests and closes idle kept-alive connections (`keepalive_timeout`, which
also bounds the wait for the head of a connection's next request), but it accepts any number of connections
and waits forever for the head of a connection's first request. `GuardedServer` adds what is missing:
- a connection past `max_connections` on the server, or past `max_connections_per_client` from one address,
  gets a one-line `503` and is closed at once (never queued), so a flood costs no file descriptors; so does
  any connection while the supervisor's descriptor budget (llmling.ipc.fdbudget) is used up;
- a connection whose first request head has not arrived within `header_timeout` is closed.
The body deadline and the response deadline belong to the request handler (`webhook.py`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from loguru import logger

from llmling.ipc.fdbudget import fd_budget

# aiohttp's parser limits, stated here so they are ours: a request line or header line, one header's value,
# and the number of headers. A request beyond them gets aiohttp's 400 and the connection is closed.
MAX_LINE_SIZE = 8190
MAX_FIELD_SIZE = 8190
MAX_HEADERS = 100
# After an early reply (413, 401, ...), the rest of a body is read and dropped for at most this long, so the
# client sees the reply instead of a reset; the per-request deadlines bound it too.
LINGERING_TIME = 2.0
# At most one log line about refused connections per server in this many seconds (a flood is not a log flood).
REFUSAL_LOG_EVERY = 10.0


class _ToLoguru(logging.Handler):
    """aiohttp's server log (malformed requests, with tracebacks) as one debug line each, without the traceback:
    a client sending garbage must not fill the log."""

    def emit(self, record: logging.LogRecord) -> None:
        cause = record.exc_info[1] if record.exc_info else None
        detail = f": {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}" if cause else ""
        logger.bind(agent="triggers").debug("webhook: {}{}", record.getMessage(), detail)


SERVER_LOG = logging.getLogger("llmling.webhook.http")
SERVER_LOG.propagate = False
SERVER_LOG.addHandler(_ToLoguru())


def _refusal(reason: str) -> bytes:
    body = json.dumps({"error": reason}).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class GuardedServer(web.Server):
    """An aiohttp low-level server that bounds its connections (see the module doc).

    Invariant: `_per_client[address]` is the number of open accepted connections from `address` (no entry at
    0); `_accepted` holds exactly the accepted connections not yet lost, each with its head deadline (None once
    its first request head arrived).
    """

    def __init__(
        self,
        handler: Callable[[BaseRequest], Awaitable[web.StreamResponse]],
        *,
        label: str,
        max_connections: int,
        max_per_client: int,
        header_timeout: float,
        keepalive_timeout: float,
    ) -> None:
        super().__init__(
            handler,
            handler_cancellation=True,
            keepalive_timeout=keepalive_timeout,
            max_line_size=MAX_LINE_SIZE,
            max_field_size=MAX_FIELD_SIZE,
            max_headers=MAX_HEADERS,
            lingering_time=LINGERING_TIME,
            auto_decompress=False,
            access_log=None,
            logger=SERVER_LOG,
        )
        self.label = label
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.header_timeout = header_timeout
        self._accepted: dict[RequestHandler[Any], tuple[str, asyncio.TimerHandle | None]] = {}
        self._per_client: dict[str, int] = {}
        self.refused = 0
        self._refused_logged = 0
        self._last_refusal_log = -REFUSAL_LOG_EVERY

    @property
    def open_connections(self) -> int:
        return len(self._accepted)

    def connection_made(self, handler: RequestHandler[Any], transport: asyncio.Transport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if len(self._accepted) >= self.max_connections:
            self._refuse(transport, address, f"too many connections ({self.max_connections})")
            return
        if fd_budget().exhausted():  # the descriptors the agents and the control socket need come first
            self._refuse(transport, address, "out of file descriptors")
            return
        if self._per_client.get(address, 0) >= self.max_per_client:
            self._refuse(transport, address, f"too many connections from {address} ({self.max_per_client})")
            return
        super().connection_made(handler, transport)
        self._per_client[address] = self._per_client.get(address, 0) + 1
        deadline = asyncio.get_running_loop().call_later(self.header_timeout, self._head_overdue, handler)
        self._accepted[handler] = (address, deadline)

    def connection_lost(self, handler: RequestHandler[Any], exc: BaseException | None = None) -> None:
        entry = self._accepted.pop(handler, None)
        if entry is None:  # a refused connection: never counted
            return
        address, deadline = entry
        if deadline is not None:
            deadline.cancel()
        left = self._per_client[address] - 1
        if left:
            self._per_client[address] = left
        else:
            del self._per_client[address]
        super().connection_lost(handler, exc)

    def head_received(self, handler: RequestHandler[Any]) -> None:
        """The first request head of `handler`'s connection arrived: its head deadline is off."""
        entry = self._accepted.get(handler)
        if entry is not None and entry[1] is not None:
            entry[1].cancel()
            self._accepted[handler] = (entry[0], None)

    def _head_overdue(self, handler: RequestHandler[Any]) -> None:
        entry = self._accepted.get(handler)
        if entry is None or entry[1] is None:
            return
        logger.bind(agent="triggers").debug(
            "webhook {}: closing a connection from {}: no request head within {} s",
            self.label,
            entry[0],
            self.header_timeout,
        )
        handler.force_close()

    def _refuse(self, transport: asyncio.Transport, address: str, reason: str) -> None:
        self.refused += 1
        transport.write(_refusal(reason))
        transport.close()
        now = time.monotonic()
        if now - self._last_refusal_log >= REFUSAL_LOG_EVERY:
            count, self._refused_logged = self.refused - self._refused_logged, self.refused
            self._last_refusal_log = now
            logger.bind(agent="triggers").warning(
                "webhook {}: refusing connections: {} (last from {}; {} refused since the last report)",
                self.label,
                reason,
                address,
                count,
            )


__all__ = ["MAX_FIELD_SIZE", "MAX_HEADERS", "MAX_LINE_SIZE", "GuardedServer"]
