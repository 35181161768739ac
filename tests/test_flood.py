"""Overload: a webhook flood on a slow agent is refused with 429 past `max_queue`, the supervisor's memory stays
bounded, and the other agents keep answering."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

import aiohttp

from tests._automation import free_port
from tests._slots import agent
from tests.conftest import Systems

DELIVERIES = 20_000
CONNECTIONS = 32
MAX_QUEUE = 1000
# The supervisor's resident memory may grow by at most this much under the flood (measured: ~10 MiB, for the
# 1,000 queued runs; the 19,000 refused deliveries leave nothing behind).
RSS_GROWTH_LIMIT_MIB = 40


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


async def flood(url: str, count: int, connections: int) -> tuple[collections.Counter[int], set[str]]:
    """POST `count` deliveries over `connections` keep-alive connections; the statuses and Retry-After values."""
    statuses: collections.Counter[int] = collections.Counter()
    retry_after: set[str] = set()
    left = iter(range(count))
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for n in left:
                async with session.post(url, data=f"delivery {n}".encode()) as response:
                    await response.read()
                    statuses[response.status] += 1
                    if response.status == 429:
                        retry_after.add(response.headers.get("Retry-After", ""))

        await asyncio.gather(*(worker() for _ in range(connections)))
    return statuses, retry_after


async def test_a_webhook_flood_is_refused_past_max_queue_with_bounded_memory(systems: Systems) -> None:
    port = free_port()
    system = systems.start(
        f"""
        shutdown_timeout: 1
        agents:
          slow:
            callback: cb:slow
            env_passthrough: [SLOW_SECONDS]  # else its run ends after 30 s, and a slow flood gets one more in
            max_queue: {MAX_QUEUE}
            triggers:
              - {{type: webhook, name: hook, port: {port}, path: /hook}}
          echo: {{callback: cb:echo}}
        """,
        env={"SLOW_SECONDS": "120"},
    )
    before = rss_mib(system.pid)
    deliveries = asyncio.create_task(flood(f"http://127.0.0.1:{port}/hook", DELIVERIES, CONNECTIONS))
    # While the flood goes on: the queue fills, and another agent's send still answers.
    while agent(system, "slow")["queued"] < MAX_QUEUE and not deliveries.done():  # type: ignore[operator]  # noqa: ASYNC110
        await asyncio.sleep(0.05)  # polling another process's status: there is no event to wait on
    answer = await asyncio.to_thread(system.cli, "send", "echo", "still here", timeout=30)
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout == "echo: still here\n"
    statuses, retry_after = await deliveries
    after = rss_mib(system.pid)
    print(f"supervisor RSS {before:.1f} -> {after:.1f} MiB after {DELIVERIES} deliveries: {dict(statuses)}")

    assert sum(statuses.values()) == DELIVERIES
    assert set(statuses) == {202, 429}, statuses
    slow = agent(system, "slow")
    # Accepted: one running and MAX_QUEUE waiting; every other delivery was refused, none lost.
    assert (slow["running"], slow["queued"]) == (1, MAX_QUEUE)
    assert statuses[202] == 1 + MAX_QUEUE
    assert statuses[429] == DELIVERIES - 1 - MAX_QUEUE
    assert retry_after and all(value.isdigit() and int(value) >= 1 for value in retry_after), retry_after
    assert after - before < RSS_GROWTH_LIMIT_MIB, f"supervisor RSS {before:.1f} -> {after:.1f} MiB"
