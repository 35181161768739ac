"""Webhook triggers: one aiohttp server per (host, port), shared by the triggers on it; a POST becomes a run.

A request goes through these checks, in this order; the first that fails answers it and no run starts:
  404 unknown path · 405 not POST · 503 trigger disabled, agent failed/stopped or system shutting down ·
  415 a Content-Encoding other than identity · 413 body over `max_body_bytes` (Content-Length, or counted while
  reading) · 408 body not received within `body_timeout_s` (the connection is closed) · 401 signature
  (`webhook_auth`; checked on the raw body, before anything parses it) · then `ping` on `event_header` → 200 and
  an event not in `events` → 204, neither a run · a delivery id seen before (`replay_headers`, or the signature
  of a signed timestamp) → 202 with the first delivery's body, no run · 400 invalid JSON/form body or a
  template that does not fit · 413 a prompt whose run frame would exceed the frame limit · 429 (Retry-After) the
  agent's queue is full · 503 the agent cannot take the run.
A run is `202 {"id","trace_id","agent","trigger"}` as soon as the agent's queue took it, or, with `?wait=true`,
`200` with the agent's reply once it finished (`502` if it failed). Every refusal above (not 200/202/204/502) is
counted in the trigger's `rejected` and reported as a `webhook_rejected` event. The body is the prompt, or
`template` renders one from it (`data` is the parsed JSON or form body; `headers[...]` ignores case).
Connection limits and the head deadline are `webhook_limits.GuardedServer`'s. Each request is handled on its own
task; nothing a request does can stop the server or the other triggers.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web
from aiohttp.web_request import BaseRequest

from llmling.config.triggers import WebhookTrigger, webhook_server_settings
from llmling.errors import AgentBusyError, StartupError, UnknownAgentError
from llmling.ipc.frames import PromptTooLarge, check_prompt_size
from llmling.supervisor.triggers.base import Firing, Outcome, TriggerHost, TriggerState, render
from llmling.supervisor.triggers.webhook_auth import SignatureError, Verifier
from llmling.supervisor.triggers.webhook_limits import GuardedServer
from llmling.supervisor.triggers.webhook_replay import DeliveryIds, MemoryDeliveryIds

_TRUE = ("1", "true", "yes", "on")
# Seconds a client has to take a response (a client that does not read is disconnected after it).
RESPONSE_TIMEOUT = 30.0
# Seconds a client is told to wait before it retries a 429.
RETRY_AFTER_S = 5
# Fields a form body may have (Slack sends about 15).
MAX_FORM_FIELDS = 1000
# A delivery id longer than this is remembered by its SHA-256.
MAX_DELIVERY_ID = 128
# The status of a run the agent refused at once, by AgentRunError.kind; the one place this mapping lives.
REFUSED_RUN_STATUS = {"busy": 429, "unavailable": 503}


class Rejection(Exception):
    """A request the trigger refuses: the HTTP status, the reason (the JSON `error`) and extra headers.
    `close`: the connection is closed after the reply (its request was not read to the end)."""

    def __init__(
        self, status: int, reason: str, headers: dict[str, str] | None = None, close: bool = False
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}
        self.close = close


class _Headers(dict[str, str]):
    """Request headers for templates, by lower-cased name: `{headers[X-GitHub-Event]}` is
    `{headers[x-github-event]}`."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        super().__init__((name.lower(), value) for name, value in headers.items())

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())


def _json_content(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


class _Endpoint:
    """One webhook trigger on its server: its config, its signature check and its delivery ids."""

    def __init__(self, trigger: TriggerState) -> None:
        assert isinstance(trigger.config, WebhookTrigger)
        self.trigger = trigger
        self.config: WebhookTrigger = trigger.config
        self.verifier: Verifier | None = None
        self.deliveries: DeliveryIds = MemoryDeliveryIds(self.config.replay_window_s, self.config.replay_max_ids)

    def load_secret(self) -> None:
        env, scheme = self.config.secret_env, self.config.scheme
        if env is None or scheme is None:
            return
        value = os.environ.get(env)
        if not value:
            raise StartupError(
                f"trigger {self.trigger.label}: environment variable {env} (its secret_env) is not set"
            )
        config = self.config
        self.verifier = Verifier(scheme, value.encode(), config.signature_header, config.timestamp_tolerance_s)

    def verify(self, request: BaseRequest, body: bytes) -> str | None:
        """Raise Rejection(401) unless signed right; return the replay key of a signed timestamp, if any."""
        if self.verifier is None:
            return None
        try:
            return self.verifier.check(request.headers, body)
        except SignatureError as exc:
            raise Rejection(401, str(exc)) from None

    def delivery(self, request: BaseRequest, signed: str | None) -> str | None:
        """The delivery id of `request` (its first `replay_headers` header), else its signed-timestamp key."""
        for name in self.config.replay_headers:
            value = request.headers.get(name, "").strip()
            if value:
                if len(value) > MAX_DELIVERY_ID:
                    value = "sha256:" + hashlib.sha256(value.encode()).hexdigest()
                return f"{name.lower()}:{value}"
        return signed


class _Server:
    """One listening address and the endpoints on it."""

    def __init__(self, host: TriggerHost, address: tuple[str, int], endpoints: list[_Endpoint]) -> None:
        self.host = host
        self.address = address
        self.label = f"{address[0]}:{address[1]}"
        self.routes = {endpoint.config.path: endpoint for endpoint in endpoints}
        self.settings = webhook_server_settings([endpoint.config for endpoint in endpoints])
        self.runner: web.ServerRunner | None = None
        self.site: web.TCPSite | None = None
        self.guard: GuardedServer | None = None
        self.stopping = False

    async def start(self) -> None:
        settings = self.settings
        self.guard = GuardedServer(
            self._handle,
            label=self.label,
            max_connections=settings["max_connections"],
            max_per_client=settings["max_connections_per_client"],
            header_timeout=settings["header_timeout_s"],
            keepalive_timeout=settings["keepalive_timeout_s"],
        )
        runner = web.ServerRunner(self.guard, shutdown_timeout=self.host.shutdown_timeout + 1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.address[0], self.address[1])
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            labels = ", ".join(endpoint.trigger.label for endpoint in self.routes.values())
            raise StartupError(f"webhook {self.label} ({labels}): cannot listen: {exc.strerror or exc}") from None
        self.runner, self.site = runner, site
        self.host.log.info("webhooks on http://{} {}", self.label, ", ".join(sorted(self.routes)))

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
                self.host.log.exception("webhook server {} did not close cleanly", self.label)

    # -- one request ----------------------------------------------------------------------------------------
    async def _handle(self, request: BaseRequest) -> web.StreamResponse:
        if self.guard is not None:
            self.guard.head_received(request.protocol)
        endpoint = self.routes.get(request.path)
        close = False
        try:
            if endpoint is None:
                raise Rejection(404, f"no webhook at {request.path}")
            response = await self._respond(request, endpoint)
        except asyncio.CancelledError:
            raise
        except Rejection as rejection:
            response = self._reject(request, endpoint, rejection)
            close = rejection.close
        except Exception as exc:
            self.host.log.opt(exception=exc).error("webhook {} failed", request.path)
            response = web.json_response({"error": f"internal error: {type(exc).__name__}"}, status=500)
        return await _send(request, response, close)

    def _reject(self, request: BaseRequest, endpoint: _Endpoint | None, rejection: Rejection) -> web.Response:
        trigger = endpoint.trigger if endpoint is not None else None
        if trigger is not None:
            trigger.rejected += 1
        self.host.log.debug("webhook {} {}: {} {}", self.label, request.path, rejection.status, rejection.reason)
        self.host.emit(
            {
                "event": "webhook_rejected",
                "agent": trigger.agent if trigger else None,
                "trigger": trigger.name if trigger else None,
                "kind": "webhook",
                "code": rejection.status,
                "reason": rejection.reason,
                "path": request.path,
            }
        )
        return web.json_response({"error": rejection.reason}, status=rejection.status, headers=rejection.headers)

    def _check_open(self, trigger: TriggerState) -> None:
        """Raise Rejection(503) unless the system, the trigger and its agent can take a run now."""
        if self.stopping or not self.host.accepting:
            raise Rejection(503, "the system is shutting down")
        if not trigger.enabled:
            raise Rejection(503, f"trigger {trigger.label} is disabled")
        try:
            state = self.host.unavailable(trigger.agent)
        except UnknownAgentError as exc:
            raise Rejection(503, str(exc)) from None
        if state is not None:
            raise Rejection(503, f"agent {trigger.agent!r} is {state}")

    async def _respond(self, request: BaseRequest, endpoint: _Endpoint) -> web.StreamResponse:
        config, trigger = endpoint.config, endpoint.trigger
        if request.method != "POST":
            raise Rejection(405, "use POST", {"Allow": "POST"})
        self._check_open(trigger)
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise Rejection(415, f"Content-Encoding {encoding[:40]!r} is not accepted (send the body as it is)")
        body = await _read_body(request, config)
        signed = endpoint.verify(request, body)
        event = request.headers.get(config.event_header, "").strip()
        ids = {"agent": trigger.agent, "trigger": trigger.name}
        if event == "ping":
            return web.json_response({**ids, "event": "ping", "ok": True})
        if config.events is not None and event not in config.events:
            self.host.skip(trigger, "event", event=event[:100])
            return web.Response(status=204)
        delivery = endpoint.delivery(request, signed)
        if delivery is not None and (first := endpoint.deliveries.get(delivery)) is not None:
            self.host.skip(trigger, "replay", first_id=first.get("id"))
            return web.json_response(first, status=202, headers={"X-Llmling-Replay": "true"})
        prompt = _prompt(request, endpoint, body, event)
        self._check_open(trigger)
        try:
            firing = self.host.fire(trigger, prompt, path=request.path, bytes=len(body))
        except AgentBusyError as exc:  # the queue is full: not accepted, the sender may retry
            raise Rejection(429, str(exc), {"Retry-After": str(exc.retry_after)}) from None
        accepted = {"id": firing.id, "trace_id": firing.trace_id, **ids}
        if delivery is not None:  # before the first await: a duplicate arriving meanwhile is a replay
            endpoint.deliveries.put(delivery, accepted)
        try:
            await _accepted(firing)
        except Rejection:
            if delivery is not None:
                endpoint.deliveries.discard(delivery)
            raise
        if request.query.get("wait", "").lower() not in _TRUE:
            return web.json_response(accepted, status=202)
        # The run is the supervisor's, not this request's: a client that goes away does not cancel it.
        await asyncio.wait({firing.task})
        outcome = firing.task.result()
        if outcome.error is not None or outcome.result is None:
            _refuse_run(outcome)
            return web.json_response({"error": outcome.error or "the run failed", **accepted}, status=502)
        result = outcome.result
        return web.json_response(
            {
                **accepted,
                "content": result.get("content", ""),
                "elapsed": result.get("elapsed"),
                "usage": result.get("usage"),
            }
        )


def _refuse_run(outcome: Outcome) -> None:
    """Raise the Rejection of a run the agent refused (queue full: 429; cannot take runs: 503)."""
    status = REFUSED_RUN_STATUS.get(outcome.kind or "")
    if status == 429:
        raise Rejection(429, outcome.error or "the agent is busy", {"Retry-After": str(RETRY_AFTER_S)})
    if status is not None:
        raise Rejection(status, outcome.error or "the agent cannot take runs")


async def _accepted(firing: Firing) -> None:
    """Wait until the run is accepted (journaled: the 202 is a promise that it reaches an outcome); a run
    refused meanwhile raises the Rejection of its kind (busy: 429, cannot take runs: 503)."""
    refused = await asyncio.shield(firing.accepted)
    if refused is None:
        return
    if firing.task.done():
        _refuse_run(firing.task.result())
    raise Rejection(503, refused)


async def _read_body(request: BaseRequest, config: WebhookTrigger) -> bytes:
    """The whole body, read under `max_body_bytes` (413) and `body_timeout_s` (408, the connection closes)."""
    limit = config.max_body_bytes
    length = request.content_length
    if length is not None and length > limit:
        raise Rejection(413, f"body is larger than {limit} bytes")
    if request.headers.get("Expect", "").lower() == "100-continue":  # curl asks before a large body
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    data = bytearray()
    try:
        async with asyncio.timeout(config.body_timeout_s):
            while chunk := await request.content.readany():
                data += chunk
                if len(data) > limit:
                    raise Rejection(413, f"body is larger than {limit} bytes")
    except TimeoutError:
        raise Rejection(
            408, f"body not received within {config.body_timeout_s:g} s ({len(data)} bytes came)", close=True
        ) from None
    return bytes(data)


def _prompt(request: BaseRequest, endpoint: _Endpoint, body: bytes, event: str) -> str:
    """The run's prompt: the body as text, or the template rendered over it. Raises Rejection (400, 413)."""
    try:
        text = body.decode(request.charset or "utf-8", errors="replace")
    except LookupError:
        raise Rejection(400, f"unknown charset {request.charset!r}") from None
    data: Any = {}
    content_type = request.content_type
    if _json_content(content_type):
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise Rejection(400, f"body is not valid JSON: {str(exc)[:200]}") from None
    elif content_type == "application/x-www-form-urlencoded":
        try:
            data = dict(parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS))
        except ValueError as exc:
            raise Rejection(400, f"body is not a valid form: {exc}") from None
    prompt = text
    template = endpoint.config.template
    if template is not None:
        trigger = endpoint.trigger
        try:
            prompt = render(
                template,
                body=text,
                data=data,
                query=dict(request.query),
                headers=_Headers(request.headers),
                event=event,
                method=request.method,
                path=request.path,
                name=trigger.name,
                agent=trigger.agent,
            )
        except ValueError as exc:
            raise Rejection(400, str(exc)) from None
    try:
        check_prompt_size(prompt)  # the one size rule: the prompt as its run frame will carry it
    except PromptTooLarge as exc:
        raise Rejection(413, str(exc)) from None
    return prompt


async def _send(request: BaseRequest, response: web.StreamResponse, close: bool) -> web.StreamResponse:
    """Write `response` within RESPONSE_TIMEOUT (a client that does not read is disconnected); with `close`,
    close the connection after it."""
    response.headers["Server"] = "llmling"  # not aiohttp's name and version
    try:
        async with asyncio.timeout(RESPONSE_TIMEOUT):
            await response.prepare(request)
            await response.write_eof()
    except (TimeoutError, ConnectionError):
        close = True
    if close:
        request.protocol.force_close()
    return response


class WebhookTriggers:
    """The service of every webhook trigger of a system: one server per (host, port)."""

    name = "webhook-triggers"

    def __init__(self, host: TriggerHost, triggers: list[TriggerState]) -> None:
        self.host = host
        groups: dict[tuple[str, int], list[_Endpoint]] = {}
        for trigger in triggers:
            endpoint = _Endpoint(trigger)
            groups.setdefault((endpoint.config.host, endpoint.config.port), []).append(endpoint)
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
                self.host.log.exception("webhook server {} failed to stop listening", server.label)
        # Requests in flight (`?wait=true`) finish with their runs during the drain; their connections close
        # then. That wait belongs to the root group, so the system's drain is not delayed by it.
        if any(server.runner is not None for server in self.servers):
            try:
                self._closing = self.host.spawn(self._close_all(), name="webhook-close")
            except RuntimeError:
                await self._close_all()

    async def _close_all(self) -> None:
        await asyncio.gather(*(server.close() for server in self.servers))


__all__ = ["REFUSED_RUN_STATUS", "Rejection", "WebhookTriggers"]
