"""Who may use the dashboard: a token on every request, a CSRF check on every state-changing one, and a Host
check against DNS rebinding.

- The token (unless `--no-token`, allowed on a loopback address only) comes as `?token=` (the printed URL; the
  answer sets it as an HttpOnly, SameSite=Strict cookie and the page drops it from the address bar), as that
  cookie, or as `Authorization: Bearer <token>`. Anything else is 401.
- A POST also needs the header `X-CSRF-Token` with the page's CSRF token (in the page's `<meta>`, readable only
  by the page itself: no CORS is ever granted), and an `Origin`, when sent, equal to the page's. Else 403.
- On a loopback bind the `Host` header must name a loopback host (a rebinding page's host is refused: 403).
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Awaitable, Callable

from aiohttp import web

COOKIE = "llmling_dashboard"
CSRF_HEADER = "X-CSRF-Token"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'",
}


class UnsafeBind(ValueError):
    """A bind the dashboard refuses (a non-loopback address without a token)."""


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Raise UnsafeBind for a non-loopback `host` without a token."""
    if token is None and not is_loopback(host):
        raise UnsafeBind(
            f"refusing to serve the dashboard on {host} without a token: any machine that reaches it could "
            "control the system (drop --no-token, or bind 127.0.0.1)"
        )


class Guard:
    """The aiohttp middleware of the rules above."""

    def __init__(self, host: str, token: str | None) -> None:
        check_bind(host, token)
        self.token = token
        self.csrf = secrets.token_urlsafe(24)
        self.loopback = is_loopback(host)

    def _has_token(self, request: web.Request) -> bool:
        if self.token is None:
            return True
        given = [
            request.query.get("token", ""),
            request.cookies.get(COOKIE, ""),
            request.headers.get("Authorization", "").removeprefix("Bearer ").strip(),
        ]
        return any(value and secrets.compare_digest(value, self.token) for value in given)

    def _host_ok(self, request: web.Request) -> bool:
        if not self.loopback:
            return True
        host = request.host.rsplit(":", 1)[0] if not request.host.endswith("]") else request.host
        return is_loopback(host.strip("[]"))

    def _csrf_ok(self, request: web.Request) -> bool:
        given = request.headers.get(CSRF_HEADER, "")
        if not given or not secrets.compare_digest(given, self.csrf):
            return False
        origin = request.headers.get("Origin")
        return origin is None or origin == f"{request.scheme}://{request.host}"

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not self._host_ok(request):
            return _refuse(403, "this dashboard answers only on its loopback address")
        if not self._has_token(request):
            return _refuse(401, "a token is needed: open the URL printed by `llmling dashboard`")
        if request.method not in ("GET", "HEAD") and not self._csrf_ok(request):
            return _refuse(403, "missing or wrong CSRF token")
        response = await handler(request)
        response.headers.update(SECURITY_HEADERS)
        if self.token is not None and request.query.get("token"):
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="Strict", path="/")
        return response


def _refuse(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status, headers=SECURITY_HEADERS)


__all__ = ["COOKIE", "CSRF_HEADER", "Guard", "UnsafeBind", "check_bind", "is_loopback"]
