"""Webhook triggers: one aiohttp server per (host, port), shared by the triggers on it; a POST becomes a run.

The body (text, or JSON when the content type says so) is the prompt, or `template` renders it. The reply
is `202 {"id","trace_id"}` as soon as the run is started, or, with `?wait=true`, `200` with the agent's reply
once it finished. Refusals: 404 unknown path, 405 not POST, 503 trigger disabled, agent stopped or system
shutting down, 413 body over `max_body_bytes`, 401 missing or wrong `X-Hub-Signature-256` (HMAC-SHA256 of
the body with the secret from `secret_env`, as GitHub sends it), 400 invalid JSON or a template that does
not fit the body, 502 the run failed (with `?wait=true`). Each request is handled on its own task; nothing a
request does can stop the server or the other triggers.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
from typing import Any

from aiohttp import web
from aiohttp.web_request import BaseRequest

from llmling.errors import StartupError, UnknownAgentError
from llmling.supervisor.triggers.base import TriggerHost, TriggerState, render

SIGNATURE_HEADER = "X-Hub-Signature-256"
_TRUE = ("1", "true", "yes", "on")


def _json_content(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def signature(secret: bytes, body: bytes) -> str:
    """The `X-Hub-Signature-256` value of `body`: `sha256=<hex>`."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class _Endpoint:
    """One webhook trigger on its server."""

    def __init__(self, trigger: TriggerState) -> None:
        self.trigger = trigger
        self.config: Any = trigger.config
        self.secret: bytes | None = None

    def load_secret(self) -> None:
        env = self.config.secret_env
        if env is None:
            return
        value = os.environ.get(env)
        if not value:
            raise StartupError(
                f"trigger {self.trigger.label}: environment variable {env} (its secret_env) is not set"
            )
        self.secret = value.encode()


class _Server:
    """One listening address and the endpoints on it."""

    def __init__(self, host: TriggerHost, address: tuple[str, int], endpoints: list[_Endpoint]) -> None:
        self.host = host
        self.address = address
        self.routes = {endpoint.config.path: endpoint for endpoint in endpoints}
        self.runner: web.ServerRunner | None = None
        self.site: web.TCPSite | None = None
        self.stopping = False

    async def start(self) -> None:
        runner = web.ServerRunner(
            web.Server(self._handle), access_log=None, shutdown_timeout=self.host.shutdown_timeout + 1.0
        )
        await runner.setup()
        site = web.TCPSite(runner, self.address[0], self.address[1])
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            labels = ", ".join(endpoint.trigger.label for endpoint in self.routes.values())
            raise StartupError(
                f"webhook {self.address[0]}:{self.address[1]} ({labels}): cannot listen: {exc.strerror or exc}"
            ) from None
        self.runner, self.site = runner, site
        self.host.log.info(
            "webhooks on http://{}:{} {}", self.address[0], self.address[1], ", ".join(sorted(self.routes))
        )

    async def stop_listening(self) -> None:
        """Refuse new connections and requests now; requests in flight may still finish."""
        self.stopping = True
        if self.site is not None:
            site, self.site = self.site, None
            await site.stop()

    async def close(self) -> None:
        """Wait (up to the drain) for requests in flight, then close every connection."""
        if self.runner is not None:
            runner, self.runner = self.runner, None
            try:
                await runner.cleanup()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.host.log.exception("webhook server {}:{} did not close cleanly", *self.address)

    async def _handle(self, request: BaseRequest) -> web.StreamResponse:
        try:
            return await self._respond(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.host.log.opt(exception=exc).error("webhook {} failed", request.path)
            return _error(500, f"internal error: {type(exc).__name__}")

    async def _respond(self, request: BaseRequest) -> web.StreamResponse:
        endpoint = self.routes.get(request.path)
        if endpoint is None:
            return _error(404, f"no webhook at {request.path}")
        if request.method != "POST":
            return web.json_response({"error": "use POST"}, status=405, headers={"Allow": "POST"})
        trigger = endpoint.trigger
        if self.stopping or not self.host.accepting:
            return _error(503, "the system is shutting down")
        if not trigger.enabled:
            return _error(503, f"trigger {trigger.label} is disabled")
        try:
            state = self.host.unavailable(trigger.agent)
        except UnknownAgentError as exc:
            return _error(503, str(exc))
        if state is not None:
            return _error(503, f"agent {trigger.agent!r} is {state}")
        limit = endpoint.config.max_body_bytes
        body = await _read_body(request, limit)
        if body is None:
            return _error(413, f"body is larger than {limit} bytes")
        if endpoint.secret is not None:
            given = request.headers.get(SIGNATURE_HEADER, "").strip().lower()
            if not given or not hmac.compare_digest(given.encode(), signature(endpoint.secret, body).encode()):
                return _error(401, f"missing or invalid {SIGNATURE_HEADER}")
        text = body.decode(request.charset or "utf-8", errors="replace")
        data: Any = None
        if _json_content(request.content_type):
            try:
                data = json.loads(text)
            except ValueError as exc:
                return _error(400, f"body is not valid JSON: {exc}")
        prompt = text
        if endpoint.config.template is not None:
            try:
                prompt = render(
                    endpoint.config.template,
                    body=text,
                    data=data if data is not None else {},
                    query=dict(request.query),
                    headers=dict(request.headers),
                    method=request.method,
                    path=request.path,
                    name=trigger.name,
                    agent=trigger.agent,
                )
            except ValueError as exc:
                return _error(400, str(exc))
        if not self.host.accepting or self.stopping:
            return _error(503, "the system is shutting down")
        firing = self.host.fire(trigger, prompt, path=request.path, bytes=len(body))
        ids = {"id": firing.id, "trace_id": firing.trace_id, "agent": trigger.agent, "trigger": trigger.name}
        # Acknowledged only once journaled: a 202 is a promise that the delivery reaches an outcome.
        if (refused := await asyncio.shield(firing.accepted)) is not None:
            return _error(503, refused, **ids)
        if request.query.get("wait", "").lower() not in _TRUE:
            return web.json_response(ids, status=202)
        # The run is the supervisor's, not this request's: a client that goes away does not cancel it.
        await asyncio.wait({firing.task})
        outcome = firing.task.result()
        if outcome.error is not None or outcome.result is None:
            return _error(502, outcome.error or "the run failed", **ids)
        result = outcome.result
        return web.json_response(
            {
                **ids,
                "content": result.get("content", ""),
                "elapsed": result.get("elapsed"),
                "usage": result.get("usage"),
            }
        )


async def _read_body(request: BaseRequest, limit: int) -> bytes | None:
    """The body, or None as soon as it is known to exceed `limit` bytes."""
    length = request.content_length
    if length is not None and length > limit:
        return None
    data = bytearray()
    while chunk := await request.content.readany():
        data += chunk
        if len(data) > limit:
            return None
    return bytes(data)


class WebhookTriggers:
    """The service of every webhook trigger of a system: one server per (host, port)."""

    name = "webhook-triggers"

    def __init__(self, host: TriggerHost, triggers: list[TriggerState]) -> None:
        self.host = host
        groups: dict[tuple[str, int], list[_Endpoint]] = {}
        for trigger in triggers:
            config: Any = trigger.config
            groups.setdefault((config.host, config.port), []).append(_Endpoint(trigger))
        self.servers: list[_Server] = []
        for address, endpoints in groups.items():
            paths = [endpoint.config.path for endpoint in endpoints]
            duplicates = {path for path in paths if paths.count(path) > 1}
            if duplicates:
                raise StartupError(f"webhook {address[0]}:{address[1]}: several triggers on {sorted(duplicates)}")
            self.servers.append(_Server(host, address, endpoints))
        self._closing: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for server in self.servers:
            for endpoint in server.routes.values():
                endpoint.load_secret()
        for server in self.servers:
            await server.start()

    async def stop(self) -> None:
        for server in self.servers:
            try:
                await server.stop_listening()
            except Exception:
                self.host.log.exception("webhook server {}:{} failed to stop listening", *server.address)
        # Requests in flight (`?wait=true`) finish with their runs during the drain; their connections close
        # then. That wait belongs to the root group, so the system's drain is not delayed by it.
        if any(server.runner is not None for server in self.servers):
            try:
                self._closing = self.host.spawn(self._close_all(), name="webhook-close")
            except RuntimeError:
                await self._close_all()

    async def _close_all(self) -> None:
        await asyncio.gather(*(server.close() for server in self.servers))


__all__ = ["SIGNATURE_HEADER", "WebhookTriggers", "signature"]
