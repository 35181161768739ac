"""The dashboard's HTTP side (aiohttp): the page, its JSON/SSE API and `/metrics`.

Reads come from the dashboard's state (built from the event stream) or from one control request
(`triggers`, `history`, `dead_letters`); actions are POSTs that become one control request each (`send`,
`trigger`, `retry`, `restart`). Every request passes the Guard (auth.py) first.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from importlib import resources
from typing import Any

from aiohttp import web
from loguru import logger

from llmling.dashboard.auth import Guard
from llmling.dashboard.source import ControlSource, SourceError
from llmling.dashboard.state import FEED, DashboardState, preview
from llmling.observe import adapter
from llmling.observe.metrics import CONTENT_TYPE

Message = dict[str, Any]
Spawn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]
STATIC = ("app.js", "app.css")
STATIC_TYPES = {"js": "text/javascript", "css": "text/css"}
# Bounds: request bodies, live-stream clients, history rows searched per agent, the status poll period.
MAX_BODY = 1 << 20
MAX_STREAMS = 32
HISTORY_SEARCHED = 500
POLL_S = 1.0
SSE_KEEPALIVE_S = 15.0
# A live-stream client gets one write per SSE_TICK_S at most, of SSE_BATCH feed entries at most (the newest).
SSE_TICK_S = 0.25
SSE_BATCH = 200


class BadInput(web.HTTPBadRequest):
    def __init__(self, reason: str) -> None:
        super().__init__(text=json.dumps({"error": reason}), content_type="application/json")


def _field(data: Message, name: str, kind: type) -> Any:
    value = data.get(name)
    if not isinstance(value, kind) or (kind is str and not value):
        raise BadInput(f"field {name!r} must be a {'non-empty string' if kind is str else kind.__name__}")
    return value


async def _body(request: web.Request) -> Message:
    try:
        data = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise BadInput("the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise BadInput("the body must be a JSON object")
    return data


class Dashboard:
    def __init__(self, socket_path: str, host: str = "127.0.0.1", port: int = 8765, token: str | None = None):
        self.guard = Guard(host, token)  # raises UnsafeBind first: nothing is started for a refused bind
        self.host, self.port, self.token = host, port, token
        self.state = DashboardState()
        self.source = ControlSource(socket_path, self.state.on_event)
        self.log = logger.bind(agent="dashboard")
        self.app = web.Application(middlewares=[self.guard.middleware], client_max_size=MAX_BODY)
        self.app.add_routes(
            [
                web.get("/", self._page),
                web.get("/static/{name}", self._static),
                web.get("/metrics", self._metrics),
                web.get("/api/overview", self._overview),
                web.get("/api/feed", self._feed),
                web.get("/api/stream", self._stream),
                web.get("/api/traces", self._traces),
                web.get("/api/traces/{trace_id}", self._trace),
                web.get("/api/triggers", self._triggers),
                web.post("/api/triggers", self._toggle),
                web.post("/api/send", self._send),
                web.get("/api/history", self._history),
                web.get("/api/dead_letters", self._dead_letters),
                web.post("/api/dead_letters/retry", self._retry),
                web.post("/api/agents/restart", self._restart),
            ]
        )
        self._runner: web.AppRunner | None = None
        # Invariant: the tasks this dashboard started (its subscription and its status poll); ended by stop().
        self._tasks: list[asyncio.Task[Any]] = []

    # -- life -----------------------------------------------------------------------------------------------
    async def start(self, spawn: Spawn) -> None:
        """Listen, subscribe and poll; raises OSError when host:port cannot be bound."""
        await self.listen()
        self.begin(spawn)

    async def listen(self) -> None:
        """Bind host:port and serve; raises OSError when it cannot be bound."""
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        server = getattr(site, "_server", None)
        if self.port == 0 and server is not None and server.sockets:
            self.port = int(server.sockets[0].getsockname()[1])

    def begin(self, spawn: Spawn) -> None:
        """Start the subscription and the status poll as tasks of the caller's group."""
        self._tasks = [spawn(self.source.run()), spawn(self._poll())]

    async def stop(self) -> None:
        self.state.close_watchers()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        self._tasks = []
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = f"?token={self.token}" if self.token else ""
        return f"http://{host}:{self.port}/{query}"

    async def _poll(self) -> None:
        """Refresh the status (queues, totals) every POLL_S while connected."""
        while True:
            await asyncio.sleep(POLL_S)
            if not self.source.connected:
                continue
            try:
                reply = await self.source.request({"t": "status"}, timeout=10.0)
            except SourceError:
                continue
            reply.pop("t", None)
            reply.pop("re", None)
            self.state.status = reply

    async def _ask(self, message: Message, timeout: float = 30.0) -> Message:
        try:
            return await self.source.request(message, timeout)
        except SourceError as exc:
            raise web.HTTPBadGateway(
                text=json.dumps({"error": str(exc)}), content_type="application/json"
            ) from None

    # -- the page -------------------------------------------------------------------------------------------
    async def _page(self, request: web.Request) -> web.Response:
        page = resources.files("llmling.dashboard").joinpath("static/index.html").read_text()
        return web.Response(text=page.replace("{{csrf}}", self.guard.csrf), content_type="text/html")

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        body = resources.files("llmling.dashboard").joinpath(f"static/{name}").read_bytes()
        return web.Response(body=body, content_type=STATIC_TYPES[name.rsplit(".", 1)[1]])

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.state.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    # -- reads ----------------------------------------------------------------------------------------------
    async def _overview(self, request: web.Request) -> web.Response:
        status = self.state.status or {}
        system = {"name": status.get("name"), "pid": status.get("pid"), "connected": self.source.connected}
        return web.json_response({"system": system, "agents": self.state.agents()})

    async def _feed(self, request: web.Request) -> web.Response:
        after = _int_query(request, "after", 0)
        return web.json_response({"events": self.state.feed_after(after, FEED)})

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: the feed's new entries, as one `data:` line (a JSON list) at most every SSE_TICK_S
        seconds: the newest SSE_BATCH of them, each entry once (`id:` is the last one's seq: a reconnecting
        browser's Last-Event-ID, or `?after=SEQ`, goes on from there). A live view costs the same at 10 or
        10,000 events a second."""
        if len(self.state.watchers) >= MAX_STREAMS:
            raise web.HTTPServiceUnavailable(text="too many live views")
        seq = _int_header(request, "Last-Event-ID") or _int_query(request, "after", 0)
        seq = min(seq, self.state.last_seq) if seq else self.state.last_seq
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        await response.prepare(request)
        waiter = asyncio.Event()
        self.state.watchers.add(waiter)
        try:
            await response.write(b": connected\n\n")
            while not self.state.closed:
                waiter.clear()
                entries = self.state.feed_after(seq, SSE_BATCH)
                if entries:
                    seq = entries[-1]["seq"]
                    data = json.dumps(entries, ensure_ascii=False)
                    await response.write(f"id: {seq}\ndata: {data}\n\n".encode())
                    await asyncio.sleep(SSE_TICK_S)
                    continue
                try:
                    await asyncio.wait_for(waiter.wait(), SSE_KEEPALIVE_S)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
        except ConnectionResetError:
            pass  # the client went away
        finally:
            self.state.watchers.discard(waiter)
        return response

    async def _traces(self, request: web.Request) -> web.Response:
        return web.json_response({"traces": self.state.trace_list(_int_query(request, "limit", 100))})

    async def _trace(self, request: web.Request) -> web.Response:
        trace = self.state.traces.get(request.match_info["trace_id"])
        if trace is None:
            raise web.HTTPNotFound(text=json.dumps({"error": "unknown trace"}), content_type="application/json")
        return web.json_response(trace.tree())

    async def _triggers(self, request: web.Request) -> web.Response:
        reply = await self._ask({"t": "triggers"})
        keys = ("agent", "name", "type", "enabled", "fired", "skipped", "failed", "rejected", "in_flight")
        shown = [{key: t.get(key) for key in keys} for t in reply.get("triggers") or () if isinstance(t, dict)]
        return web.json_response({"triggers": shown})

    async def _history(self, request: web.Request) -> web.Response:
        """Finished runs of one agent (or every agent) whose prompt or reply contains `q`, newest first."""
        agent = request.query.get("agent", "")
        needle = request.query.get("q", "").lower()[:200]
        limit = min(_int_query(request, "limit", 50), 200)
        names = [agent] if agent else [a["name"] for a in self.state.agents()]
        found: list[Message] = []
        for name in names:
            reply = await self._ask({"t": "history", "agent": name, "limit": HISTORY_SEARCHED})
            for run in reply.get("runs") or ():
                text = f"{run.get('prompt', '')}\n{run.get('content', '')}".lower()
                if needle in text:
                    usage = run.get("usage") or {}
                    found.append(
                        {
                            "agent": name,
                            "id": run.get("id"),
                            "trace_id": run.get("trace_id"),
                            "finished_at": run.get("finished_at"),
                            "elapsed": run.get("elapsed"),
                            "cost": usage.get("cost"),
                            "prompt": preview(run.get("prompt")),
                            "content": preview(run.get("content")),
                        }
                    )
        found.sort(key=lambda run: run.get("finished_at") or 0, reverse=True)
        return web.json_response({"runs": found[:limit]})

    async def _dead_letters(self, request: web.Request) -> web.Response:
        try:
            reply = await self.source.request({"t": adapter.DEAD_LETTERS_REQUEST}, 30.0)
        except SourceError as exc:  # a system without a journal (or without delivery) has none to show
            return web.json_response({"available": False, "reason": str(exc), "dead_letters": []})
        letters = [{**asdict(letter), "prompt": preview(letter.prompt)} for letter in adapter.dead_letters(reply)]
        return web.json_response({"available": True, "dead_letters": letters})

    # -- actions (POST, CSRF-checked) -----------------------------------------------------------------------
    async def _toggle(self, request: web.Request) -> web.Response:
        data = await _body(request)
        message = {
            "t": "trigger",
            "agent": _field(data, "agent", str),
            "name": _field(data, "name", str),
            "enabled": _field(data, "enabled", bool),
        }
        reply = await self._ask(message)
        return web.json_response({"trigger": reply.get("trigger")})

    async def _send(self, request: web.Request) -> web.Response:
        data = await _body(request)
        message = {"t": "send", "agent": _field(data, "agent", str), "prompt": _field(data, "prompt", str)}
        reply = await self._ask(message, timeout=120.0)
        keys = ("agent", "id", "trace_id", "content")
        return web.json_response({key: reply.get(key) for key in keys})

    async def _retry(self, request: web.Request) -> web.Response:
        data = await _body(request)
        reply = await self._ask(adapter.retry_request(_field(data, "id", str)))
        return web.json_response({"retried": reply.get("retried") or []})

    async def _restart(self, request: web.Request) -> web.Response:
        data = await _body(request)
        await self._ask({"t": adapter.RESTART_REQUEST, "agent": _field(data, "agent", str)}, timeout=120.0)
        return web.json_response({"restarted": data["agent"]})


def _int_header(request: web.Request, name: str) -> int:
    """A header's non-negative integer, 0 when absent or not one."""
    value = request.headers.get(name, "")
    return int(value) if value.isdigit() and len(value) < 19 else 0


def _int_query(request: web.Request, name: str, default: int) -> int:
    try:
        return max(0, int(request.query.get(name, default)))
    except ValueError:
        raise BadInput(f"query {name!r} must be an integer") from None


async def run(dashboard: Dashboard, on_listening: Callable[[str], None], idle: bool = False) -> None:
    """Serve until cancelled (Ctrl+C); owns the dashboard's tasks. Raises OSError when the port is taken.
    With `idle` (the `up --dashboard` child), run under SCHED_IDLE once listening."""
    await dashboard.listen()
    if idle:
        from llmling.observe.scheduling import become_idle

        become_idle()
    async with asyncio.TaskGroup() as group:
        dashboard.begin(group.create_task)
        try:
            on_listening(dashboard.url)
            await asyncio.Event().wait()
        finally:
            await dashboard.stop()


__all__ = ["Dashboard", "run"]
