"""The journal's cost: chain throughput and hop latency with `durability: off`, `batch` and `sync`, in one run.

    .venv/bin/python bench/delivery.py [--messages 10000] [--clients 64] [--hops 300] [--modes off batch sync]

For each durability mode, one `llmling up` (real processes) with callback agents `a >> b >> c` and a lone `z`:

1. throughput: `--messages` sends to `a` with `wait: true` (each answered once `c` has finished: 3 runs, 2
   hops, every one journaled and recorded) from `--clients` concurrent connections of one asyncio client;
   msg/s = messages / wall time; the per-message latency under that load (p50/p99);
2. hop latency at rest: `--hops` sequential `send --wait` to `a` (the chain) and to `z` (alone), interleaved;
   one hop = (chain - lone) / 2, at p50 and p99.

Writes bench/delivery.json (and prints it); `batch_vs_off` is batch's throughput over off's (target >= 0.70).
On a loaded 2-core machine every figure is noisy; the modes run one after another, in the order given, twice
each unless --rounds 1 (the best round of each mode is kept, as load comes and goes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import struct
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import ROOT, System, Workspace, chain_meta, log, percentile

OUT = ROOT / "bench" / "delivery.json"
TARGET_BATCH_VS_OFF = 0.70


def write_config(ws: Workspace, mode: str) -> Path:
    path = ws.dir / f"chain-{mode}.yml"
    # `none`: no durability key, for a checkout that predates the journal (its venv's python runs this).
    durability = "" if mode == "none" else f"durability: {mode}\n"
    path.write_text(
        f"""name: chain-{mode}
{durability}agents:
  a: {{callback: "bcb:echo", connections: [b]}}
  b: {{callback: "bcb:echo", connections: [c]}}
  c: {{callback: "bcb:echo"}}
  z: {{callback: "bcb:echo"}}
"""
    )
    return path


class Connection:
    """One control-socket connection speaking the frame protocol (4-byte length, JSON)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tag: str) -> None:
        self.reader, self.writer, self.tag, self.count = reader, writer, tag, 0

    @classmethod
    async def open(cls, path: str, tag: str) -> Connection:
        reader, writer = await asyncio.open_unix_connection(path, limit=1 << 24)
        return cls(reader, writer, tag)

    async def send(self, agent: str, prompt: str) -> dict[str, Any]:
        """`send` with `wait`; returns the final frame (chunks, such as `accepted`, are skipped)."""
        self.count += 1
        request_id = f"{self.tag}-{self.count}"
        body = json.dumps({"t": "send", "id": request_id, "agent": agent, "prompt": prompt, "wait": True})
        data = body.encode()
        self.writer.write(struct.pack(">I", len(data)) + data)
        while True:
            size = struct.unpack(">I", await self.reader.readexactly(4))[0]
            frame = json.loads(await self.reader.readexactly(size))
            if frame.get("t") == "chunk":
                continue
            if frame.get("t") != "result" or len(frame.get("downstream", [])) != (2 if agent == "a" else 0):
                raise RuntimeError(f"unexpected reply: {frame}")
            return frame

    def close(self) -> None:
        self.writer.close()


async def throughput(socket: str, messages: int, clients: int, agent: str = "a") -> dict[str, Any]:
    connections = [await Connection.open(socket, f"c{i}") for i in range(clients)]
    left = messages
    latencies: list[float] = []

    async def client(connection: Connection) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            began = time.perf_counter()
            await connection.send(agent, "x")
            latencies.append((time.perf_counter() - began) * 1000)

    began = time.perf_counter()
    await asyncio.gather(*(client(c) for c in connections))
    wall = time.perf_counter() - began
    for connection in connections:
        connection.close()
    return {
        "messages": len(latencies),
        "runs": 3 * len(latencies),
        "wall_s": round(wall, 3),
        "msg_per_s": round(len(latencies) / wall, 1),
        "latency_ms": {"p50": round(percentile(latencies, 0.5), 2), "p99": round(percentile(latencies, 0.99), 2)},
    }


async def hop_latency(socket: str, count: int) -> dict[str, Any]:
    connection = await Connection.open(socket, "hop")
    chain: list[float] = []
    lone: list[float] = []
    for _ in range(20):  # warm-up
        await connection.send("a", "w")
        await connection.send("z", "w")
    for _ in range(count):
        for agent, into in (("a", chain), ("z", lone)):
            began = time.perf_counter()
            await connection.send(agent, "h")
            into.append((time.perf_counter() - began) * 1000)
    connection.close()

    def hop(q: float) -> float:
        return round((percentile(chain, q) - percentile(lone, q)) / 2, 3)

    return {
        "n": count,
        "hop_ms": {"p50": hop(0.5), "p99": hop(0.99)},
        "chain_ms": {"p50": round(percentile(chain, 0.5), 3), "p99": round(percentile(chain, 0.99), 3)},
        "lone_ms": {"p50": round(percentile(lone, 0.5), 3), "p99": round(percentile(lone, 0.99), 3)},
    }


def bench_mode(ws: Workspace, mode: str, messages: int, clients: int, hops: int) -> dict[str, Any]:
    system = System(write_config(ws, mode), ws.socket())
    try:
        system.start()
        result = asyncio.run(throughput(system.socket, messages, clients))
        result["hop"] = asyncio.run(hop_latency(system.socket, hops))
        return result
    finally:
        system.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--hops", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--modes", nargs="+", default=["off", "batch", "sync"], choices=["off", "batch", "sync", "none"]
    )
    args = parser.parse_args()
    load_before = os.getloadavg()
    ws = Workspace()
    rounds: dict[str, list[dict[str, Any]]] = {mode: [] for mode in args.modes}
    try:
        for index in range(args.rounds):
            for mode in args.modes:
                log(f"round {index + 1}: durability {mode}")
                result = bench_mode(ws, mode, args.messages, args.clients, args.hops)
                log(f"  {result['msg_per_s']} msg/s, hop p50 {result['hop']['hop_ms']['p50']} ms")
                rounds[mode].append(result)
    finally:
        ws.remove()
    best = {mode: max(results, key=lambda r: r["msg_per_s"]) for mode, results in rounds.items()}
    out: dict[str, Any] = {
        "meta": chain_meta(load_before, args.messages, args.clients),
        "modes": best,
        "all_rounds_msg_per_s": {mode: [r["msg_per_s"] for r in results] for mode, results in rounds.items()},
    }
    if "off" in best and "batch" in best:
        ratio = best["batch"]["msg_per_s"] / best["off"]["msg_per_s"]
        out["batch_vs_off"] = round(ratio, 3)
        out["target"] = {"batch_vs_off": TARGET_BATCH_VS_OFF, "ok": ratio >= TARGET_BATCH_VS_OFF}
    OUT.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
