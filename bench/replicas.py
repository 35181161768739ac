"""Replicas benchmark through real processes (in-process supervisors, real agent processes and sockets);
writes bench/replicas.json.

    .venv/bin/python bench/replicas.py [--runs 300] [--rounds 3] [--hops 2000]

1. Throughput of a slow agent (a callback that awaits asyncio.sleep(0.05), `concurrency: 1`) with
   `replicas: 1` and `replicas: 3`: `--runs` runs sent at once through the router (the path of every send),
   runs/s from the first send to the last reply; rounds alternate 1 and 3, the median of each is kept.
   Target: 3 replicas ≥ 2.5 times the throughput of 1.
2. What `replicas: 1` costs per run: the supervisor wraps even a lone process in `AgentReplicas`. One run at
   a time of an echo callback, through that wrapper and through a bare `AgentSlot` (the runner before
   replicas), alternating run by run between two systems running side by side; µs per run, p50 and p99.

Progress goes to stderr; the JSON object is also printed on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import ROOT, log, machine, percentile, summary

from llmling.config import load_config
from llmling.supervisor.runner import AgentRunner
from llmling.supervisor.slot import AgentSlot, SlotPolicy
from llmling.supervisor.system import Supervisor

OUT = ROOT / "bench" / "replicas.json"
CALLBACKS = """
import asyncio


async def slow(prompt):
    await asyncio.sleep(0.05)
    return prompt


def echo(prompt):
    return prompt
"""
# Throughput of 3 replicas over 1, at least.
SPEEDUP_TARGET = 2.5


class BareSlotSupervisor(Supervisor):
    """Each agent's runner is one `AgentSlot` (as before replicas): the baseline of the per-run cost."""

    def _new_slot(self, name: str) -> AgentRunner:
        agent = self.config.agents[name]
        policy = SlotPolicy.from_config(self.config, agent)
        return AgentSlot(name, self._spec_maker(name), self._spawner, self.emit, policy)


def write_system(folder: Path, name: str, agents: str) -> Path:
    (folder / "repcb.py").write_text(CALLBACKS)
    path = folder / f"{name}.yml"
    path.write_text(f"name: {name}\ndurability: off\nagents:\n{agents}")
    return path


async def throughput(folder: Path, replicas: int, runs: int) -> float:
    """Runs per second of `runs` slow runs sent at once to an agent of `replicas` processes."""
    config = load_config(
        write_system(folder, f"tp{replicas}", f"  slow: {{callback: 'repcb:slow', replicas: {replicas}}}\n")
    )
    async with Supervisor(config, socket=folder / f"tp{replicas}.sock", log_level=None) as supervisor:
        router = supervisor.router
        await asyncio.gather(*(router.send("slow", "warm") for _ in range(replicas * 2)))
        started = time.perf_counter()
        results = await asyncio.gather(*(router.send("slow", f"run {n}") for n in range(runs)))
        elapsed = time.perf_counter() - started
    assert len(results) == runs
    return runs / elapsed


async def per_run_cost(folder: Path, runs: int) -> dict[str, Any]:
    """µs per run (one at a time) through `AgentReplicas` with one replica and through a bare `AgentSlot`."""
    wrapped_config = load_config(write_system(folder, "wrapped", "  echo: {callback: 'repcb:echo'}\n"))
    bare_config = load_config(write_system(folder, "bare", "  echo: {callback: 'repcb:echo'}\n"))
    samples: dict[str, list[float]] = {"replicas_1": [], "bare_slot": []}
    async with (
        Supervisor(wrapped_config, socket=folder / "wrapped.sock", log_level=None) as wrapped,
        BareSlotSupervisor(bare_config, socket=folder / "bare.sock", log_level=None) as bare,
    ):
        systems = [("replicas_1", wrapped), ("bare_slot", bare)]
        for i in range(runs // 10 + runs):
            for label, supervisor in systems if i % 2 == 0 else reversed(systems):
                started = time.perf_counter_ns()
                await supervisor.router.send("echo", "x")
                if i >= runs // 10:  # after the warm-up
                    samples[label].append((time.perf_counter_ns() - started) / 1000)
    out: dict[str, Any] = {label: summary(values, keep=False) for label, values in samples.items()}
    out["difference_us"] = {
        "paired_median": round(
            statistics.median(a - b for a, b in zip(samples["replicas_1"], samples["bare_slot"], strict=True)), 1
        ),
        "p50": round(percentile(samples["replicas_1"], 0.5) - percentile(samples["bare_slot"], 0.5), 1),
        "p99": round(percentile(samples["replicas_1"], 0.99) - percentile(samples["bare_slot"], 0.99), 1),
        "how": "router.send of an echo run, one at a time; AgentReplicas(1) minus a bare AgentSlot",
    }
    return out


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="ll-rep-") as name:
        folder = Path(name)
        rates: dict[int, list[float]] = {1: [], 3: []}
        for round_ in range(args.rounds):
            for replicas in (1, 3) if round_ % 2 == 0 else (3, 1):
                rate = await throughput(folder, replicas, args.runs)
                rates[replicas].append(rate)
                log(f"round {round_ + 1}: replicas {replicas}: {rate:.1f} runs/s")
        log("per-run cost of replicas: 1 ...")
        cost = await per_run_cost(folder, args.hops)
    one, three = statistics.median(rates[1]), statistics.median(rates[3])
    return {
        "slow_agent_throughput": {
            "runs": args.runs,
            "rounds": args.rounds,
            "run_seconds": 0.05,
            "concurrency": 1,
            "runs_per_s": {
                "replicas_1": summary(rates[1]),
                "replicas_3": summary(rates[3]),
            },
            "speedup_median": round(three / one, 2),
        },
        "replicas_1_per_run_cost_us": cost,
        "targets": {
            "speedup_3_over_1": {
                "target": SPEEDUP_TARGET,
                "value": round(three / one, 2),
                "met": three / one >= SPEEDUP_TARGET,
            }
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hops", type=int, default=2000, help="runs of each side of the per-run cost")
    args = parser.parse_args()
    result = {
        "meta": machine(),
        **uvloop.run(measure(args)),
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
