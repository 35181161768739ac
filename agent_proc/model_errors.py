"""What a failed litellm call means: the ModelError type, the provider's message, the status, Retry-After.

litellm wraps the OpenAI SDK's errors, which wrap httpx's, which wrap the socket's; the facts are spread over
that chain (litellm reports a refused connection as `InternalServerError` with status 500, and drops the
response headers of a 429), so `classify` reads the whole chain. Imports only what the agent process already
loaded with litellm (openai, httpx).
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

from llmling.errors import (
    ModelAuthError,
    ModelBadRequest,
    ModelError,
    ModelRateLimited,
    ModelServerError,
    ModelTimeout,
    ModelUnreachable,
)

# litellm's decoration around the provider's message: "litellm.RateLimitError: RateLimitError: OpenAIException - "
_DECORATION = re.compile(r"^(litellm\.\w+: )?(\w+Error: )?(\w+Exception - )?")


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed attempt, classified."""

    kind: type[ModelError]
    message: str  # the provider's message
    status: int | None  # HTTP status of the provider's answer; None when there was no answer
    retryable: bool  # a 429 or 5xx: worth another attempt
    retry_after: float | None = None  # seconds the provider asked us to wait (Retry-After)


def classify(exc: BaseException) -> Failure | None:
    """The failure behind an exception raised by `litellm.acompletion` (or its stream); None when it is not one
    of a model call (a bug of ours: the caller lets it through as it is)."""
    import httpx
    import openai

    chain = list(_chain(exc))
    if any(isinstance(item, openai.APITimeoutError | httpx.TimeoutException | TimeoutError) for item in chain):
        return Failure(ModelTimeout, _message(exc), None, retryable=False)
    if any(isinstance(item, openai.APIConnectionError | httpx.TransportError | OSError) for item in chain):
        return Failure(ModelUnreachable, _connection_message(chain), None, retryable=False)
    status = _status(chain)
    if status is None:
        if isinstance(exc, openai.OpenAIError):  # e.g. a response that is not a completion
            return Failure(ModelError, _message(exc), None, retryable=False)
        return None
    retry_after = _retry_after(chain)
    if status in (401, 403):
        return Failure(ModelAuthError, _message(exc), status, retryable=False)
    if status == 429:
        return Failure(ModelRateLimited, _message(exc), status, retryable=True, retry_after=retry_after)
    if status >= 500:
        return Failure(ModelServerError, _message(exc), status, retryable=True, retry_after=retry_after)
    if status == 408:
        return Failure(ModelTimeout, _message(exc), status, retryable=False)
    return Failure(ModelBadRequest, _message(exc), status, retryable=False)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    item: BaseException | None = exc
    while item is not None and id(item) not in seen:
        seen.add(id(item))
        yield item
        item = item.__cause__ or item.__context__


def _message(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    return _DECORATION.sub("", text, count=1) or type(exc).__name__


def _connection_message(chain: list[BaseException]) -> str:
    """The socket's own words ("Connection refused", "Name or service not known"), else the client's."""
    for item in reversed(chain):
        if isinstance(item, ConnectionRefusedError):
            return "Connection refused"
        if isinstance(item, OSError) and item.strerror:
            return item.strerror
    return _message(chain[0])


def _status(chain: list[BaseException]) -> int | None:
    """The provider's HTTP status: from the innermost response (litellm re-labels some, e.g. 403 as APIError)."""
    for item in reversed(chain):
        response = getattr(item, "response", None)
        status = getattr(response, "status_code", None)
        if isinstance(status, int) and status >= 400:
            return status
    status = getattr(chain[0], "status_code", None)
    return status if isinstance(status, int) else None


def _retry_after(chain: list[BaseException]) -> float | None:
    """Seconds from a `Retry-After` header (seconds or an HTTP date) of the provider's answer."""
    for item in chain:
        headers = getattr(getattr(item, "response", None), "headers", None)
        value = headers.get("retry-after") if headers is not None else None
        if value:
            return parse_retry_after(value)
    return None


def parse_retry_after(value: str) -> float | None:
    """`Retry-After: 3` or `Retry-After: Wed, 21 Oct 2015 07:28:00 GMT` in seconds from now (>= 0)."""
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
