"""One model call under llmling's limits: one overall deadline, explicit retries, typed failures.

- Deadline: `model_settings.timeout` seconds bound the whole call — every attempt, the waits between them and
  the whole stream — with one `asyncio.timeout`; litellm's and the OpenAI SDK's own retries are off (they made a
  3 s timeout fail after ~11 s: three attempts of 3 s plus their backoff).
- Retries: a 429 or 5xx answer is retried up to `model_settings.num_retries` times, after the provider's
  `Retry-After` when it sent one, else after an exponential backoff with jitter (0.25-0.5 s, 0.5-1 s, 1-2 s, ...
  up to 8 s). A retry that could not start before the deadline is not made (the error says so). Nothing is
  retried once text was streamed to the caller (it would be sent twice).
- Every failure is a ModelError subclass (llmling/errors.py) naming the model, its api_base, the attempts made
  and the seconds spent; connection failures are not retried (ModelUnreachable at once).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from loguru import logger

from llmling.agent_proc.model_errors import Failure, classify
from llmling.errors import ModelError, ModelTimeout

T = TypeVar("T")

BACKOFF_BASE = 0.5  # seconds before the first retry (without Retry-After)
BACKOFF_CAP = 8.0  # the longest wait between two attempts without Retry-After


@dataclass(frozen=True, slots=True)
class CallLimits:
    """Who is called and under which limits (from `model`, `api_base` and `model_settings`)."""

    model: str
    api_base: str | None  # None: the provider's default endpoint
    timeout: float  # seconds for the whole call, > 0
    num_retries: int  # retries after a 429/5xx, >= 0


def backoff(retry: int) -> float:
    """Seconds before retry number `retry` (1-based): half of min(8, 0.5·2^(retry-1)) s, plus as much jitter."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (retry - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


async def call_model(
    limits: CallLimits,
    attempt: Callable[[], Awaitable[T]],
    streamed: Callable[[], bool] = lambda: False,
) -> T:
    """Run `attempt()` until it succeeds, under the deadline and retry rules above.

    `streamed()` says whether text already went to the caller (then a failure is not retried).
    Raises a ModelError subclass; cancellation passes through.
    """
    started = time.monotonic()
    deadline = started + limits.timeout
    attempts = 0
    scope = asyncio.timeout(limits.timeout)
    try:
        async with scope:
            while True:
                attempts += 1
                try:
                    return await attempt()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    failure = classify(exc)
                    if failure is None:
                        raise
                    wait = _retry_wait(failure, attempts, limits, streamed())
                    elapsed = time.monotonic() - started
                    if wait is None:
                        raise _error(failure, limits, attempts, elapsed) from exc
                    if time.monotonic() + wait >= deadline:
                        late = f"{failure.message} (a retry in {wait:.1f} s would pass the timeout)"
                        raise _error(replace(failure, message=late), limits, attempts, elapsed) from exc
                    logger.warning(
                        "model {} answered {} ({}); retry {}/{} in {:.2f} s",
                        limits.model,
                        failure.status,
                        failure.message,
                        attempts,
                        limits.num_retries,
                        wait,
                    )
                    await asyncio.sleep(wait)
    except TimeoutError as exc:
        if not scope.expired():
            raise
        raise ModelTimeout(
            f"no complete answer within model_settings.timeout={limits.timeout:g} s",
            model=limits.model,
            api_base=limits.api_base,
            attempts=attempts,
            elapsed=time.monotonic() - started,
        ) from exc


def _retry_wait(failure: Failure, attempts: int, limits: CallLimits, streamed: bool) -> float | None:
    """Seconds to wait before the next attempt, or None when this failure is final."""
    if not failure.retryable or streamed or attempts > limits.num_retries:
        return None
    return failure.retry_after if failure.retry_after is not None else backoff(attempts)


def _error(failure: Failure, limits: CallLimits, attempts: int, elapsed: float) -> ModelError:
    return failure.kind(
        failure.message,
        model=limits.model,
        api_base=limits.api_base,
        status=failure.status,
        attempts=attempts,
        elapsed=elapsed,
    )
