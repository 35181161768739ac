"""Admission and restart benchmarks through real processes; writes bench/admission.json.

    .venv/bin/python bench/admission.py [--kills 20] [--deliveries 100000]

1. SIGKILL of an idle agent -> its replacement READY (median of N): the time from `kill(2)` to the
   `agent_state ready` event of the new process, read from the system's event stream (`subscribe`). Each
   kill is a first crash (the restart window, `restart.period`, is short and passes between kills), so it
   measures the immediate first restart.
2. The supervisor's resident memory (VmRSS) before and after a flood of webhook deliveries on an agent
   that never finishes a run (`max_queue` 1000, concurrency 1): every delivery past the queue is refused
   with 429, so memory stays bounded however long the flood.

Progress goes to stderr; the JSON object is also printed on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import ROOT, System, Workspace, log, machine, summary

from llmling.ipc.client import Client

OUT = ROOT / "bench" / "admission.json"
TARGETS = {"sigkill_to_ready_median_ms": 200.0}
CALLBACKS = """\
import asyncio


async def hold(prompt):
    await asyncio.sleep(3600)
    return "never"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for {pid}")


# -- 1: SIGKILL -> READY -----------------------------------------------------------------------------------------
def sigkill_to_ready(ws: Workspace, kills: int) -> dict[str, Any]:
    # A 0.2 s restart window and 0.4 s between kills: every kill is a first crash, restarted at once.
    config = ws.config(
        "restart",
        {"victim": {"callback": "bcb:echo", "restart": {"max_restarts": 5, "period": 0.2}}},
    )
    system = System(config, ws.socket())
    samples: list[float] = []
    try:
        system.start()
        pid = int(system.discover().agents["victim"])
        with Client(Path(system.socket), 30.0) as client:
            events = client.stream({"t": "subscribe", "agents": ["victim"]})
            next(events)  # `subscribed`
            for _ in range(kills):
                time.sleep(0.4)  # idle, and the previous crash has left the restart window
                began = time.perf_counter()
                os.kill(pid, signal.SIGKILL)
                for frame in events:
                    event = frame.get("event") or {}
                    if event.get("event") == "agent_state" and event.get("state") == "ready":
                        samples.append((time.perf_counter() - began) * 1000)
                        pid = int(event["pid"])
                        break
        restarts = system.status()["agents"][0]["restarts"]  # type: ignore[index]
    finally:
        system.sigint()
    log(f"SIGKILL -> READY: median {statistics.median(samples):.1f} ms over {len(samples)} kills")
    return {"kills": kills, "restarts": restarts, "ms": summary(samples)}


# -- 2: flood ----------------------------------------------------------------------------------------------------
async def post_all(url: str, count: int, connections: int) -> collections.Counter[int]:
    statuses: collections.Counter[int] = collections.Counter()
    left = iter(range(count))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:

        async def worker() -> None:
            for n in left:
                async with session.post(url, data=f"delivery {n}".encode()) as response:
                    await response.read()
                    statuses[response.status] += 1

        await asyncio.gather(*(worker() for _ in range(connections)))
    return statuses


def flood(ws: Workspace, deliveries: int, connections: int) -> dict[str, Any]:
    (ws.dir / "badm.py").write_text(CALLBACKS)
    port = free_port()
    config = ws.config(
        "flood",
        {
            "slow": {
                "callback": "badm:hold",
                "max_queue": 1000,
                "triggers": [{"type": "webhook", "name": "hook", "port": port, "path": "/hook"}],
            }
        },
    )
    config.write_text(config.read_text() + "shutdown_timeout: 0\n")
    system = System(config, ws.socket())
    try:
        system.start()
        supervisor = system.discover().supervisor
        before = rss_mib(supervisor)
        began = time.perf_counter()
        statuses = asyncio.run(post_all(f"http://127.0.0.1:{port}/hook", deliveries, connections))
        seconds = time.perf_counter() - began
        after = rss_mib(supervisor)
        agent = system.status()["agents"][0]  # type: ignore[index]
    finally:
        system.sigint()
    log(f"flood: {dict(statuses)} in {seconds:.1f} s; supervisor RSS {before} -> {after} MiB")
    return {
        "deliveries": deliveries,
        "connections": connections,
        "max_queue": 1000,
        "statuses": {str(code): n for code, n in sorted(statuses.items())},
        "seconds": round(seconds, 1),
        "deliveries_per_s": round(deliveries / seconds),
        "supervisor_rss_mib": {"before": before, "after": after, "growth": round(after - before, 1)},
        "agent_restarts": agent.get("restarts"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--deliveries", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    ws = Workspace()
    try:
        restart = sigkill_to_ready(ws, args.kills)
        overload = flood(ws, args.deliveries, args.connections)
    finally:
        ws.remove()
    result = {
        "meta": machine(),
        "sigkill_to_ready": restart,
        "webhook_flood": overload,
        "targets": {
            name: {
                "target": limit,
                "value": restart["ms"]["median"],
                "met": restart["ms"]["median"] <= limit,
            }
            for name, limit in TARGETS.items()
        },
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
