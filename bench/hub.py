"""The hub's own share of one hop A >> B: time spent inside the supervisor between having A's reply and
dispatching B's run, measured in a real system (an in-process AgentPool, real agent processes, real sockets)
with a listener on the supervisor's events: `run_finished` of A, then `run_started` of B of the same trace.

What this leaves out, on purpose: the frames' travel and the agents' own work, which the end-to-end hop figure
in `round_trips.hop` includes.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from llmling import AgentPool

CALLBACK = "def reply(prompt):\n    return prompt\n"
CONFIG = "name: hub\nagents:\n  a: {callback: 'hubcb:reply', connections: [b]}\n  b: {callback: 'hubcb:reply'}\n"


async def _measure(folder: Path, iterations: int) -> list[float]:
    (folder / "hubcb.py").write_text(CALLBACK)
    (folder / "hub.yml").write_text(CONFIG)
    finished: dict[str, int] = {}
    routing_ns: list[int] = []

    def listener(event: dict[str, Any]) -> None:
        now = time.perf_counter_ns()
        kind = event.get("event")
        if kind == "run_finished" and event.get("agent") == "a":
            finished[event["trace_id"]] = now
        elif kind == "run_started" and event.get("agent") == "b":
            routing_ns.append(now - finished.pop(event["trace_id"]))

    async with AgentPool(folder / "hub.yml", socket=folder / "s.sock") as pool:
        pool.supervisor.add_listener(listener)
        a = pool.get_agent("a")
        for _ in range(iterations // 10):  # warm-up
            await a.run("x", wait_for_connections=True)
        routing_ns.clear()
        for _ in range(iterations):
            await a.run("x", wait_for_connections=True)
    return [ns / 1000 for ns in routing_ns]


def bench_hub(iterations: int) -> list[float]:
    """Microseconds of hub routing per hop, one sample per run."""
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="ll-hub-") as folder:
        return uvloop.run(_measure(Path(folder), iterations))
