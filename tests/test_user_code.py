"""User code off the event loop (llmling.user_code): sync functions on worker threads, and what cancelling
such a call means for a thread that runs and for one still queued."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from llmling.user_code import call


async def test_a_cancelled_call_waits_for_its_running_thread_and_a_queued_one_never_runs() -> None:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(1))  # one thread: the second call has to queue
    ran: list[str] = []
    release = threading.Event()
    started: asyncio.Future[None] = loop.create_future()

    def blocking() -> str:
        loop.call_soon_threadsafe(started.set_result, None)
        release.wait(30)
        ran.append("blocking")
        return "late"

    def queued() -> None:
        ran.append("queued")

    first = asyncio.create_task(call(blocking, settle=True))
    await started
    second = asyncio.create_task(call(queued, settle=True))
    await asyncio.sleep(0)  # the second call is now queued behind the busy thread
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second  # given up while queued: no need to wait for the busy thread
    assert ran == []

    first.cancel()
    loop.call_soon(release.set)
    with pytest.raises(asyncio.CancelledError):
        await first  # ends only after its thread has
    assert ran == ["blocking"]
    await loop.run_in_executor(None, lambda: None)  # the executor has taken every queued job by now
    assert ran == ["blocking"]  # the abandoned call never ran


async def test_sync_functions_run_on_a_worker_thread_and_async_ones_on_the_loop() -> None:
    def sync_name() -> str:
        return threading.current_thread().name

    async def async_name() -> str:
        return threading.current_thread().name

    async def coroutine_maker() -> str:
        return "awaited"

    main = threading.current_thread().name
    assert await call(sync_name) != main
    assert await call(async_name) == main
    assert await call(lambda: coroutine_maker()) == "awaited"  # a sync wrapper returning a coroutine
