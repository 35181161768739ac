"""One MCP server of an agent: a long-lived client session, its tools, its resources.

The MCP SDK's client is an async context (anyio task groups inside) that must be entered and exited by the
same task, so each connection is owned by a task of its own (`_own`): it enters the client, hands it over
through a future, waits until it is released, and exits it. Calls are made from any task of the agent.

A server that dies (its process exits, its HTTP endpoint goes away) makes the call that finds out fail with a
tool error; the death is logged, the dead session is released, and the next call connects again.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any

from loguru import logger

from llmling.agent_proc.tools import Tool, ToolError
from llmling.config.capabilities import HttpServerConfig, StdioServerConfig

# The MCP error code for "the connection closed" (the server died or the session was torn down).
CONNECTION_CLOSED = -32000
# Seconds the owner task gets to close the session (the SDK stops a stdio server within ~4 s).
CLOSE_TIMEOUT = 6.0


class MCPConnection:
    """The client side of one configured MCP server.

    Invariant: `_client` is set exactly while an owner task holds an open session; `_lock` serialises
    connecting, so concurrent calls share one connect.
    """

    def __init__(self, config: StdioServerConfig | HttpServerConfig, base_dir: str, agent: str = "") -> None:
        self.config = config
        self.name: str = str(config.name)
        self.base_dir = base_dir
        self.timeout: float = config.timeout
        self.log = logger.bind(agent=agent) if agent else logger
        self.tools: list[Any] = []  # mcp Tool descriptions, as listed at init
        self._client: Any = None
        self._release: asyncio.Event | None = None
        self._owner: asyncio.Task[None] | None = None
        # Every owner task still running (a dropped session's owner may still be closing it).
        self._owners: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self._initialised = asyncio.Event()
        self._init_error: BaseException | None = None
        self._closed = False

    # -- init ---------------------------------------------------------------------------------------------
    async def connect(self) -> None:
        """The init component: connect and list the server's tools. Raises what connecting raised."""
        try:
            try:
                client = await self._ensure()
            except Exception as exc:
                raise ConnectionError(f"cannot connect to {self.where}: {_describe(exc)}") from exc
            tools: list[Any] = []
            cursor = None
            while True:
                page = await asyncio.wait_for(client.list_tools(cursor=cursor), self.timeout)
                tools.extend(page.tools)
                cursor = page.next_cursor
                if not cursor:
                    break
            self.tools = tools
            self.log.info(
                "MCP server {!r}: {} tools ({})", self.name, len(tools), ", ".join(t.name for t in tools)
            )
        except BaseException as exc:
            self._init_error = exc
            raise
        finally:
            self._initialised.set()

    @property
    def where(self) -> str:
        if isinstance(self.config, HttpServerConfig):
            return self.config.url
        return " ".join([self.config.command, *self.config.args])

    async def wait_initialised(self) -> None:
        """Wait for `connect()` to end; raises ConnectionError when it failed (for knowledge resources)."""
        await self._initialised.wait()
        if self._init_error is not None:
            raise ConnectionError(f"MCP server {self.name!r} did not connect: {_describe(self._init_error)}")

    def agent_tools(self) -> list[Tool]:
        """The listed tools, as Tools of the agent's ToolBox (their names may get the server's prefix)."""
        out = []
        for listed in self.tools:

            async def call(arguments: dict[str, Any], remote: str = listed.name) -> str:
                return await self.call_tool(remote, arguments)

            out.append(
                Tool(
                    name=listed.name,
                    description=listed.description or listed.name,
                    parameters=dict(listed.input_schema or {"type": "object", "properties": {}}),
                    call=call,
                    origin=f"mcp:{self.name}",
                )
            )
        return out

    # -- calls --------------------------------------------------------------------------------------------
    async def call_tool(self, name: str, arguments: dict[str, Any]) -> str:
        """Call a tool of this server; returns its text. Raises ToolError (the tool failed) or the transport's
        error (then the session is dropped and the next call reconnects)."""
        client = await self._ensure()
        result = await self._checked(client, client.call_tool(name, arguments), f"tool {name!r}")
        text = _content_text(result.content)
        if not text and result.structured_content is not None:
            import json

            text = json.dumps(result.structured_content, ensure_ascii=False, default=str)
        if result.is_error:
            raise ToolError(text or f"{name} failed")
        return text

    async def read_resource(self, uri: str) -> str:
        """The text of resource `uri` (binary parts are described, not included)."""
        client = await self._ensure()
        result = await self._checked(client, client.read_resource(uri), f"resource {uri!r}")
        parts = []
        for item in result.contents:
            text = getattr(item, "text", None)
            if text is not None:
                parts.append(text)
            else:
                parts.append(f"[binary resource {item.uri} ({item.mime_type or 'unknown type'})]")
        return "\n".join(parts)

    async def _checked(self, client: Any, request: Any, what: str) -> Any:
        from mcp import MCPError

        try:
            return await asyncio.wait_for(request, self.timeout)
        except MCPError as exc:
            if exc.code == CONNECTION_CLOSED:
                self.log.warning(
                    "MCP server {!r} is gone ({} failed: {}); reconnecting on the next call", self.name, what, exc
                )
                self._drop(client)
            raise
        except TimeoutError:
            raise TimeoutError(f"MCP server {self.name!r}: {what} took longer than {self.timeout} s") from None

    # -- the session's owner ------------------------------------------------------------------------------
    async def _ensure(self) -> Any:
        async with self._lock:
            if self._closed:
                raise ConnectionError(f"MCP server {self.name!r} is closed")
            if self._client is None:
                await self._start()
            return self._client

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[Any] = loop.create_future()
        release = self._release = asyncio.Event()
        owner = self._owner = asyncio.create_task(self._own(ready, release), name=f"mcp-{self.name}")
        self._owners.add(owner)
        owner.add_done_callback(self._owners.discard)
        try:
            self._client = await asyncio.wait_for(asyncio.shield(ready), self.timeout)
        except TimeoutError:
            await self._stop_owner()
            raise TimeoutError(f"no answer within {self.timeout} s") from None
        except BaseException:
            await self._stop_owner()
            raise
        self.log.debug("MCP server {!r} connected", self.name)

    async def _own(self, ready: asyncio.Future[Any], release: asyncio.Event) -> None:
        from mcp import Client

        current = None
        try:
            async with Client(self._target()) as client:
                current = client
                ready.set_result(client)
                await release.wait()
        except asyncio.CancelledError:
            if not ready.done():
                ready.set_exception(ConnectionError("connecting was cancelled"))
            raise
        except Exception as exc:
            error = _unwrap(exc)
            if not ready.done():
                ready.set_exception(error)
            elif not release.is_set():
                self.log.warning("MCP server {!r} session ended: {}", self.name, _describe(error))
        finally:
            if current is not None and self._client is current:
                self._client = None  # it ended on its own: the next call connects again
            if not ready.done():
                ready.set_exception(ConnectionError("the session ended before it was ready"))
            # Retrieve it, so an unawaited failure is not reported as never retrieved.
            if ready.done() and not ready.cancelled():
                ready.exception()

    def _target(self) -> Any:
        from mcp import StdioServerParameters

        if isinstance(self.config, HttpServerConfig):
            return _http_transport(self.config.url, self.config.headers)
        command = self.config.command
        if command in ("python", "python3"):
            command = sys.executable  # the interpreter llmling runs on (it has the mcp package)
        return StdioServerParameters(
            command=command,
            args=list(self.config.args),
            env=dict(self.config.env) or None,
            cwd=self.base_dir,
        )

    def _drop(self, client: Any) -> None:
        """Forget a dead session (if it is still the current one) and let its owner close it."""
        if self._client is client:
            self._client = None
            if self._release is not None:
                self._release.set()

    async def _stop_owner(self) -> None:
        owner, self._owner = self._owner, None
        if self._release is not None:
            self._release.set()
        if owner is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(owner), CLOSE_TIMEOUT)
        except TimeoutError:
            self.log.warning("MCP server {!r} did not close within {} s; cancelling", self.name, CLOSE_TIMEOUT)
            owner.cancel()
            with contextlib.suppress(BaseException):
                await owner
        except Exception:
            pass  # the owner reported its failure through the ready future or the log

    async def close(self) -> None:
        """Close the session (stopping a stdio server's process). Never raises."""
        self._closed = True
        self._client = None
        await self._stop_owner()
        for owner in list(self._owners):  # sessions dropped earlier, still closing
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(owner), CLOSE_TIMEOUT)


def _http_transport(url: str, headers: dict[str, str]) -> Any:
    """A Streamable HTTP transport with our headers; the transport owns (and closes) its HTTP client."""
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    @contextlib.asynccontextmanager
    async def transport() -> Any:
        async with (
            create_mcp_http_client(headers=headers or None) as http,
            streamable_http_client(url, http_client=http) as streams,
        ):
            yield streams

    return transport()


def _content_text(content: list[Any]) -> str:
    parts = []
    for item in content:
        kind = getattr(item, "type", "")
        if kind == "text":
            parts.append(item.text)
        elif kind == "resource":
            resource = item.resource
            parts.append(getattr(resource, "text", None) or f"[binary resource {resource.uri}]")
        elif kind in ("image", "audio"):
            parts.append(f"[{kind} ({getattr(item, 'mime_type', '')})]")
        elif kind == "resource_link":
            parts.append(f"[resource {item.uri}]")
    return "\n".join(parts)


def _unwrap(exc: BaseException) -> BaseException:
    """The single cause inside nested exception groups (anyio wraps a failed connect in one)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
