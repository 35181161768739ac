"""Across hosts: the NATS transport against the Unix socket, in one run.

    .venv/bin/python bench/nats.py [--messages 2000] [--clients 32] [--hops 200] [--slow 150]

One real `nats-server -js` (llmling.testing.NatsServer, file storage in a temp dir), and:

1. socket: `llmling up` with callback agents `a >> b >> c` and a lone `z`, all local;
2. nats: `llmling up` with the same agents placed `remote` (served by one `llmling host` on this machine), a
   local lone `loc`, and two slow remote agents (`await asyncio.sleep(0.05)`): `s1` (`replicas: 1`) and `s3`
   (`replicas: 3`).

For each: chain throughput (`--messages` `send` with `wait` to `a` from `--clients` connections: 3 runs and 2 hops
per message; msg/s) and hop latency at rest (`--hops` sequential `send --wait` to `a` and to `z`, interleaved;
one hop = (chain - lone) / 2, p50/p99) — the functions of bench/delivery.py. Then, on the nats system, the cost
of a remote run above a local one (lone `z` remote against lone `loc` local, interleaved, p50/p99) and the
throughput of `--slow` runs of `s1` against `s3` (target: 3 replicas >= 2.5 times one).

Writes bench/nats.json (and prints it). The machine is shared and loaded: ratios mean more than absolutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from delivery import Connection, hop_latency, throughput
from harness import LLMLING, ROOT, System, Workspace, chain_meta, child_env, log, percentile

from llmling.ipc.client import Client
from llmling.testing import NatsServer

OUT = ROOT / "bench" / "nats.json"
TARGET_REPLICAS = 2.5
SLOW = "import asyncio\n\n\nasync def slow(prompt):\n    await asyncio.sleep(0.05)\n    return prompt\n"


def socket_config(ws: Workspace) -> Path:
    path = ws.dir / "sock.yml"
    path.write_text(
        """name: sock
durability: batch
agents:
  a: {callback: "bcb:echo", connections: [b]}
  b: {callback: "bcb:echo", connections: [c]}
  c: {callback: "bcb:echo"}
  z: {callback: "bcb:echo"}
"""
    )
    return path


def nats_config(ws: Workspace, url: str) -> Path:
    (ws.dir / "bslow.py").write_text(SLOW)
    path = ws.dir / "over.yml"
    path.write_text(
        f"""name: over
durability: batch
transport: {{nats: {{url: "{url}", ack_wait: 5, host_heartbeat: 0.5}}}}
agents:
  a: {{callback: "bcb:echo", connections: [b], placement: remote}}
  b: {{callback: "bcb:echo", connections: [c], placement: remote}}
  c: {{callback: "bcb:echo", placement: remote}}
  z: {{callback: "bcb:echo", placement: remote}}
  loc: {{callback: "bcb:echo"}}
  s1: {{callback: "bslow:slow", placement: remote, replicas: 1}}
  s3: {{callback: "bslow:slow", placement: remote, replicas: 3}}
"""
    )
    return path


class Host:
    """`llmling host --config CONFIG` in its own session; `start()` returns once its processes are READY."""

    def __init__(self, config: Path, socket: str) -> None:
        self.config, self.socket = config, socket
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> None:
        argv = [LLMLING, "host", "--config", str(self.config), "--name", "bench", "--socket", self.socket, "-q"]
        env = child_env(XDG_STATE_HOME=str(self.config.parent / "state"))
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llmling host exited with {self.proc.returncode}")
            with contextlib.suppress(OSError), Client(self.socket, 5.0) as client:
                status = client.request({"t": "status"})
                if status.get("state") == "ready":
                    return
            time.sleep(0.05)
        raise RuntimeError("llmling host not ready in time")

    def close(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


async def lone_cost(socket: str, count: int) -> dict[str, Any]:
    """A lone remote run (`z`) against a lone local one (`loc`), interleaved; the cost at p50 and p99."""
    connection = await Connection.open(socket, "cost")
    remote: list[float] = []
    local: list[float] = []
    for _ in range(20):
        await connection.send("z", "w")
        await connection.send("loc", "w")
    for _ in range(count):
        for agent, into in (("z", remote), ("loc", local)):
            began = time.perf_counter()
            await connection.send(agent, "h")
            into.append((time.perf_counter() - began) * 1000)
    connection.close()

    def at(values: list[float], q: float) -> float:
        return round(percentile(values, q), 3)

    return {
        "n": count,
        "remote_ms": {"p50": at(remote, 0.5), "p99": at(remote, 0.99)},
        "local_ms": {"p50": at(local, 0.5), "p99": at(local, 0.99)},
        "cost_ms": {q: round(at(remote, p) - at(local, p), 3) for q, p in (("p50", 0.5), ("p99", 0.99))},
    }


async def slow_throughput(socket: str, agent: str, messages: int, clients: int) -> float:
    """runs/s of `messages` sends to a slow agent from `clients` connections."""
    return float((await throughput(socket, messages, clients, agent))["msg_per_s"])


def bench_socket(ws: Workspace, args: argparse.Namespace) -> dict[str, Any]:
    system = System(socket_config(ws), ws.socket())
    try:
        system.start()
        result = asyncio.run(throughput(system.socket, args.messages, args.clients))
        result["hop"] = asyncio.run(hop_latency(system.socket, args.hops))
        return result
    finally:
        system.close()


def bench_nats(ws: Workspace, args: argparse.Namespace) -> dict[str, Any]:
    with NatsServer(ws.dir / "nats") as server:
        config = nats_config(ws, server.url)
        system = System(config, ws.socket())
        host = Host(config, ws.socket())
        try:
            system.start()
            host.start()
            result = asyncio.run(throughput(system.socket, args.messages, args.clients))
            result["hop"] = asyncio.run(hop_latency(system.socket, args.hops))
            result["remote_cost"] = asyncio.run(lone_cost(system.socket, args.hops))
            asyncio.run(slow_throughput(system.socket, "s3", 30, 6))  # warm-up
            one = asyncio.run(slow_throughput(system.socket, "s1", args.slow, args.clients))
            three = asyncio.run(slow_throughput(system.socket, "s3", args.slow, args.clients))
            result["slow_50ms"] = {
                "runs": args.slow,
                "replicas_1_runs_per_s": one,
                "replicas_3_runs_per_s": three,
                "scaling": round(three / one, 2),
            }
            return result
        finally:
            host.close()
            system.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--hops", type=int, default=200)
    parser.add_argument("--slow", type=int, default=150)
    args = parser.parse_args()
    load_before = os.getloadavg()
    ws = Workspace()
    try:
        log("socket: a >> b >> c, z (local)")
        sock = bench_socket(ws, args)
        log(f"  {sock['msg_per_s']} msg/s, hop p50 {sock['hop']['hop_ms']['p50']} ms")
        log("nats: a >> b >> c, z (remote, one host), loc (local), s1/s3 (slow, remote)")
        over = bench_nats(ws, args)
        log(f"  {over['msg_per_s']} msg/s, hop p50 {over['hop']['hop_ms']['p50']} ms")
    finally:
        ws.remove()
    scaling = over["slow_50ms"]["scaling"]
    out: dict[str, Any] = {
        "meta": chain_meta(load_before, args.messages, args.clients),
        "socket": sock,
        "nats": over,
        "nats_vs_socket_throughput": round(over["msg_per_s"] / sock["msg_per_s"], 3),
        "target": {"replicas_3_vs_1": TARGET_REPLICAS, "ok": scaling >= TARGET_REPLICAS},
    }
    OUT.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
