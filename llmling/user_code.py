"""Calling user code (callbacks, tools, filters, transforms) without blocking the event loop.

An async function is awaited on the loop. A sync one runs on a worker thread of the loop's default executor,
with the caller's context variables (so it sees the current run); an awaitable it returns is then awaited on
the loop. The loop stays free meanwhile: it answers heartbeats and serves other runs, however long the sync
code takes.

A thread cannot be interrupted. With `settle=True` (agent runs), cancelling the call (a run timeout) waits
for the thread to end before the cancellation goes on, so a run counts as stopped only when its code has
stopped; a thread that never ends keeps its run from being answered, and the supervisor replaces the process
after its grace period. A call still queued for a thread (all busy) is given up at once and never runs.
Without it (the supervisor's conditions), a cancelled call returns at once and the thread's result is
dropped.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import threading
from collections.abc import Callable
from typing import Any


def is_async(function: Callable[..., Any]) -> bool:
    """Whether calling `function` returns a coroutine (async functions, partials of them, async `__call__`)."""
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        getattr(function, "__call__", None)  # noqa: B004  (an object with an async __call__)
    )


async def call(function: Callable[..., Any], /, *args: Any, settle: bool = False, **kwargs: Any) -> Any:
    """Call `function(*args, **kwargs)` (sync or async) and return its result; see the module docstring."""
    if is_async(function):
        return await function(*args, **kwargs)
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    if not settle:
        result = await loop.run_in_executor(None, functools.partial(context.run, function, *args, **kwargs))
    else:
        job = _Job(functools.partial(context.run, function, *args, **kwargs))
        future = loop.run_in_executor(None, job.run)
        try:
            result = await asyncio.shield(future)
        except asyncio.CancelledError:
            if job.abandon():  # still queued for a thread: it will never run
                raise
            await asyncio.wait({future})  # it runs: wait for its end; a second cancellation ends this wait
            raise
    if inspect.isawaitable(result):  # a sync wrapper that returned a coroutine
        result = await result
    return result


class _Job:
    """A call queued for a worker thread that can be abandoned until a thread starts it."""

    __slots__ = ("_call", "_lock", "_state")

    def __init__(self, call: Callable[[], Any]) -> None:
        self._call = call
        self._lock = threading.Lock()
        # Invariant: "queued" until a thread takes the job ("running") or the caller gives it up ("abandoned").
        self._state = "queued"

    def run(self) -> Any:
        with self._lock:
            if self._state == "abandoned":
                return None
            self._state = "running"
        return self._call()

    def abandon(self) -> bool:
        """Give the job up if no thread has started it; False when it runs (or ran)."""
        with self._lock:
            if self._state == "queued":
                self._state = "abandoned"
            return self._state == "abandoned"


__all__ = ["call", "is_async"]
