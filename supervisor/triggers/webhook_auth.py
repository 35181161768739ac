"""Webhook signatures: who sent a request, checked on the raw body before anything parses it.

Each scheme is an HMAC-SHA256 keyed with the trigger's secret (`secret_env`), as the sender computes it:
- `github`: `X-Hub-Signature-256: sha256=<hex of HMAC(body)>`.
- `stripe`: `Stripe-Signature: t=<unix time>,v1=<hex of HMAC("<t>.<body>")>` (several `v1=` may be given; one
  must match); `t` must be within the tolerance of now.
- `slack`: `X-Slack-Request-Timestamp: <unix time>` and `X-Slack-Signature: v0=<hex of HMAC("v0:<ts>:<body>")>`;
  the timestamp must be within the tolerance of now.
- `hmac-sha256`: `<signature_header>: <hex of HMAC(body)>`, with or without a `sha256=` prefix.
Comparisons are constant-time. A scheme that signs a timestamp makes a replay outside the tolerance fail; a
replay inside it carries the same signature, which `Verifier.check` returns as the request's replay key.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable, Mapping

GITHUB_HEADER = "X-Hub-Signature-256"
STRIPE_HEADER = "Stripe-Signature"
SLACK_HEADER = "X-Slack-Signature"
SLACK_TIMESTAMP = "X-Slack-Request-Timestamp"
# A signature header longer than this is refused without looking at it (Stripe sends ~150 bytes).
MAX_SIGNATURE_HEADER = 1024


class SignatureError(Exception):
    """The request is not signed as its trigger requires; the message says what is wrong (for the 401)."""


def hmac_hex(secret: bytes, payload: bytes) -> str:
    return hmac.new(secret, payload, hashlib.sha256).hexdigest()


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


class Verifier:
    """Checks one trigger's signatures. `clock` gives the unix time (tests and the tolerance use it)."""

    __slots__ = ("_check", "_clock", "_header", "_secret", "_tolerance", "scheme")

    def __init__(
        self,
        scheme: str,
        secret: bytes,
        header: str,
        tolerance: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        checks: dict[str, Callable[[Mapping[str, str], bytes], str | None]] = {
            "github": self._github,
            "stripe": self._stripe,
            "slack": self._slack,
            "hmac-sha256": self._plain,
        }
        self.scheme = scheme
        self._check = checks[scheme]
        self._secret = secret
        self._header = header
        self._tolerance = tolerance
        self._clock = clock

    def check(self, headers: Mapping[str, str], body: bytes) -> str | None:
        """Raise SignatureError unless `body` is signed right; return the replay key of a signed timestamp."""
        return self._check(headers, body)

    def _header_value(self, headers: Mapping[str, str], name: str) -> str:
        value = headers.get(name, "").strip()
        if not value:
            raise SignatureError(f"missing {name}")
        if len(value) > MAX_SIGNATURE_HEADER:
            raise SignatureError(f"{name} is longer than {MAX_SIGNATURE_HEADER} bytes")
        return value

    def _fresh(self, stamp: str, name: str) -> None:
        try:
            sent = float(stamp)
        except ValueError:
            raise SignatureError(f"{name}: timestamp {stamp[:32]!r} is not a number") from None
        if not math.isfinite(sent):
            raise SignatureError(f"{name}: timestamp {stamp[:32]!r} is not a number")
        skew = self._clock() - sent
        if abs(skew) > self._tolerance:
            when = "old" if skew > 0 else "in the future"
            raise SignatureError(
                f"{name}: timestamp is {abs(skew):.0f} s {when} (tolerance {self._tolerance:g} s)"
            )

    def _github(self, headers: Mapping[str, str], body: bytes) -> None:
        given = self._header_value(headers, GITHUB_HEADER).lower()
        if not _same(given, "sha256=" + hmac_hex(self._secret, body)):
            raise SignatureError(f"invalid {GITHUB_HEADER}")

    def _plain(self, headers: Mapping[str, str], body: bytes) -> None:
        given = self._header_value(headers, self._header).lower().removeprefix("sha256=")
        if not _same(given, hmac_hex(self._secret, body)):
            raise SignatureError(f"invalid {self._header}")

    def _stripe(self, headers: Mapping[str, str], body: bytes) -> str:
        value = self._header_value(headers, STRIPE_HEADER)
        stamp, signatures = "", []
        for part in value.split(","):
            key, _, item = part.strip().partition("=")
            if key == "t":
                stamp = item
            elif key == "v1":
                signatures.append(item.lower())
        if not stamp or not signatures:
            raise SignatureError(f"{STRIPE_HEADER} needs t= and v1=")
        expected = hmac_hex(self._secret, stamp.encode() + b"." + body)
        # Every candidate is compared, so the time taken does not say which one matched.
        if not sum(_same(given, expected) for given in signatures):
            raise SignatureError(f"invalid {STRIPE_HEADER}")
        self._fresh(stamp, STRIPE_HEADER)
        return f"stripe:{expected}"

    def _slack(self, headers: Mapping[str, str], body: bytes) -> str:
        stamp = self._header_value(headers, SLACK_TIMESTAMP)
        given = self._header_value(headers, SLACK_HEADER).lower()
        expected = "v0=" + hmac_hex(self._secret, b"v0:" + stamp.encode() + b":" + body)
        if not _same(given, expected):
            raise SignatureError(f"invalid {SLACK_HEADER}")
        self._fresh(stamp, SLACK_TIMESTAMP)
        return f"slack:{expected}"


__all__ = ["GITHUB_HEADER", "SignatureError", "Verifier", "hmac_hex"]
