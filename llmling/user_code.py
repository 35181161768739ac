"""Calling user code (callbacks, tools, filters, transforms) without blocking the event loop.

An async function is awaited on the loop. A sync one runs on a worker thread of the loop's default executor,
with the caller's context variables (so it sees the current run); an awaitable it returns is then awaited on
the loop. The loop stays free meanwhile: it answers heartbeats and serves other runs, however long the sync
code takes.

A thread cannot be interrupted. With `settle=True` (agent runs), cancelling the call (a run timeout) waits
for the thread to end before the cancellation goes on, so a run counts as stopped only when its code has
stopped; a thread that never ends keeps its run from being answered, and the supervisor replaces the process
after its grace period. Without it (the supervisor's conditions), a cancelled call returns at once and the
thread's result is dropped.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
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
    future = loop.run_in_executor(None, functools.partial(context.run, function, *args, **kwargs))
    if settle:
        try:
            result = await asyncio.shield(future)
        except asyncio.CancelledError:
            await asyncio.wait({future})  # the thread ends on its own; a second cancellation ends this wait
            raise
    else:
        result = await future
    if inspect.isawaitable(result):  # a sync wrapper that returned a coroutine
        result = await result
    return result


__all__ = ["call", "is_async"]
