"""llmling benchmarks through the real CLI and real processes.

    .venv/bin/python bench/run.py [--quick] [--only callback litellm rt]

Prints ONE JSON object on stdout (its `targets` key holds the verdicts); progress goes to stderr. Measures:

1. spawn of `llmling up` -> all agents READY (read from up's own stderr line `system '…' ready:`), for 1, 8 and
   32 callback agents and 8 litellm agents; `python -c "import litellm"` (wall, and the import statement alone);
2. unique memory (USS = Private_Clean + Private_Dirty of /proc/PID/smaps_rollup) per agent process at READY,
   after thousands of runs and after a full gc.collect() inside an agent (the copy-on-write exposure, also in an
   agent forked from the litellm forkserver); the supervisor's and forkserver's RSS/USS for context;
3. `send` round trips: the in-process `llmling.ipc.client.Client`, and the whole `llmling send` process
   (with interpreter baselines and the `-X importtime` costs of the CLI);
4. one hop A >> B: `send --wait` on A (connected to B) minus `send --wait` on a lone C, interleaved; the CPU
   each process spends per request (schedstat); and the raw IPC floor (a control-socket ping);
5. the hub's own share of a hop (bench/hub.py): inside a real supervisor, from A's reply in hand to B's run
   dispatched;
6. SIGINT (to the process group, like Ctrl+C) with 8 idle agents -> every process of the system gone
   (supervisor, agents, forkserver, resource tracker; exits seen on pidfds, no polling), and the exit code.

Every process started is ended (SIGINT, SIGKILL after a deadline), even on errors. Systems run from a temp dir
under /tmp (configs, callback module, sockets, run history). The machine's load average is in `meta`: on a busy
2-core machine every figure is noisy, medians are reported for that reason.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    LLMLING,
    PYTHON,
    ROOT,
    System,
    Workspace,
    child_env,
    cpu_ns,
    log,
    memory_mib,
    percentile,
    summary,
)
from hub import bench_hub

from llmling.ipc.client import Client

SECTIONS = ["callback", "litellm", "rt", "hub"]
TARGETS = {
    "ready_8_callback_median_ms": 1000.0,
    "ready_8_litellm_over_import_ms": 500.0,
    "agent_uss_max_mib": 25.0,
    "hop_overhead_p50_us": 100.0,
    "cli_send_median_ms": 150.0,
    "sigint_8_idle_all_gone_median_ms": 500.0,
}


# -- 1, 2, 5: start-up, memory, SIGINT --------------------------------------------------------------------------
def one_system_run(ws: Workspace, config: Path, settle: float) -> dict[str, Any]:
    """Start, measure READY, read memory, SIGINT and wait until every process is gone."""
    system = System(config, ws.socket())
    try:
        ready_ms = system.start()
        tree = system.discover()
        time.sleep(settle)  # idle agents
        mem = {
            "agents": [memory_mib(pid) for pid in tree.agents.values()],
            "supervisor": memory_mib(tree.supervisor),
            "forkserver": memory_mib(tree.forkserver) if tree.forkserver else None,
        }
        stop = system.sigint()
    finally:
        system.close()
    return {"ready_ms": ready_ms, "memory": mem, "sigint": stop, "others": len(tree.others)}


IMPORT_LITELLM = (
    "import time; t = time.perf_counter(); import litellm; print((time.perf_counter() - t) * 1000, flush=True)"
)


def import_litellm_ms() -> tuple[float, float]:
    """Wall ms of `python -c "import litellm"` (start to exit, as the target defines it) and the ms of the
    import statement alone (the wall also holds interpreter start-up and the teardown of litellm's objects)."""
    argv = [str(PYTHON), "-c", IMPORT_LITELLM]
    t0 = time.perf_counter()
    out = subprocess.run(argv, check=True, capture_output=True, env=child_env(LITELLM_LOCAL_MODEL_COST_MAP="True"))
    return (time.perf_counter() - t0) * 1000, float(out.stdout)


def memory_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    uss = [a["uss"] for run in runs for a in run["memory"]["agents"]]
    pss = [a["pss"] for run in runs for a in run["memory"]["agents"]]
    return {
        "agent_uss_mib": {"median": round(statistics.median(uss), 2), "max": max(uss), "n": len(uss)},
        "agent_pss_mib_median": round(statistics.median(pss), 2),
        "agent_rss_mib_median": round(statistics.median(a["rss"] for r in runs for a in r["memory"]["agents"]), 2),
        "supervisor_rss_mib": round(statistics.median(r["memory"]["supervisor"]["rss"] for r in runs), 2),
        "supervisor_uss_mib": round(statistics.median(r["memory"]["supervisor"]["uss"] for r in runs), 2),
        "forkserver_rss_mib": round(statistics.median(r["memory"]["forkserver"]["rss"] for r in runs), 2),
        "forkserver_uss_mib": round(statistics.median(r["memory"]["forkserver"]["uss"] for r in runs), 2),
    }


def sigint_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    stops = [run["sigint"] for run in runs]
    gone = [s["all_gone_ms"] for s in stops if s["all_gone_ms"] is not None]
    out: dict[str, Any] = {
        "all_gone_ms": summary(gone) if gone else None,
        "exit_codes": [s["exit_code"] for s in stops],
        "runs_with_leftovers": sum(1 for s in stops if s["leftover_pids"]),
        "processes_watched": stops[0]["processes"],
    }
    for key in ("supervisor_ms", "agents_ms", "forkserver_ms"):
        values = [s[key] for s in stops if s[key] is not None]
        out[f"{key.removesuffix('_ms')}_gone_median_ms"] = round(statistics.median(values), 1) if values else None
    return out


def bench_startup(ws: Workspace, reps: int, out: dict[str, Any]) -> None:
    # One unmeasured start: compiles bytecode of the temp module, warms the page cache.
    one_system_run(ws, ws.callback_config(1), 0.0)
    sizes = (1, 8, 32)
    configs = {n: ws.callback_config(n) for n in sizes}
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
    for rep in range(reps):
        for n in sizes:  # interleaved, so a noisy minute spreads over every size
            run = one_system_run(ws, configs[n], 0.3)
            runs[n].append(run)
            log(
                f"callback x{n} run {rep + 1}/{reps}: READY {run['ready_ms']:.0f} ms, "
                f"SIGINT->gone {run['sigint']['all_gone_ms']} ms, exit {run['sigint']['exit_code']}"
            )
    for n in sizes:
        out["ready_ms"][f"callback_{n}"] = summary([r["ready_ms"] for r in runs[n]])
        out["sigint"][f"callback_{n}"] = sigint_summary(runs[n])
    out["memory"]["callback_8"] = memory_summary(runs[8])


def bench_litellm(ws: Workspace, llm_reps: int, out: dict[str, Any]) -> None:
    # litellm: interleave the import timing with the system starts so both see the same machine state.
    import_litellm_ms()  # warm-up, unmeasured
    config = ws.litellm_config(8)
    imports, import_only, runs = [], [], []
    for rep in range(llm_reps):
        wall, statement = import_litellm_ms()
        imports.append(wall)
        import_only.append(statement)
        runs.append(one_system_run(ws, config, 0.3))
        log(
            f"litellm x8 run {rep + 1}/{llm_reps}: python -c 'import litellm' {wall:.0f} ms "
            f"(import statement {statement:.0f} ms), "
            f"READY {runs[-1]['ready_ms']:.0f} ms, SIGINT->gone {runs[-1]['sigint']['all_gone_ms']} ms"
        )
    out["ready_ms"]["litellm_8"] = summary([r["ready_ms"] for r in runs])
    out["import_litellm_ms"] = summary(imports)
    out["import_litellm_statement_only_ms"] = summary(import_only)
    out["sigint"]["litellm_8"] = sigint_summary(runs)
    out["memory"]["litellm_8"] = memory_summary(runs)
    log("copy-on-write probe (full gc in an agent of the litellm forkserver) ...")
    out["memory"]["litellm_forkserver_gc_probe"] = bench_litellm_gc_probe(ws)


def bench_litellm_gc_probe(ws: Workspace) -> dict[str, Any]:
    """A callback agent forked from the litellm-preloaded forkserver (one litellm agent in the system) runs a
    full gc.collect(): its USS before/after shows what a full collection costs any agent of that forkserver."""
    agent = {"model": "openai/x", "api_base": "http://127.0.0.1:9/v1"}
    config = ws.config("llmgc", {"m0": agent, "g": {"callback": "bcb:echo"}})
    system = System(config, ws.socket())
    try:
        system.start()
        tree = system.discover()
        pid = tree.agents["g"]
        before = memory_mib(pid)
        with Client(Path(system.socket), timeout=60) as client:
            reply = client.request({"t": "send", "agent": "g", "prompt": "__gc__", "stream": False, "wait": False})
        after = memory_mib(pid)
        out = {
            "agent_before_gc_mib": before,
            "agent_after_gc_mib": after,
            "gc_collect_ms": float(reply["content"]),
            "litellm_agent_m0_mib": memory_mib(tree.agents["m0"]),
        }
        out["sigint"] = system.sigint()
    finally:
        system.close()
    return out


# -- 3, 4: round trips ------------------------------------------------------------------------------------------
def send_message(agent: str, wait: bool = False) -> dict[str, Any]:
    # What `llmling send AGENT TEXT` sends (stream unless --json).
    return {"t": "send", "agent": agent, "prompt": "hi", "stream": True, "wait": wait}


def timed_requests(client: Client, make: Any, n: int, check: Any) -> list[float]:
    samples = []
    clock = time.perf_counter_ns
    for _ in range(n):
        message = make()
        t0 = clock()
        reply = client.request(message)
        samples.append((clock() - t0) / 1000)
        check(reply)
    return samples


def check_result(reply: dict[str, Any]) -> None:
    if reply.get("t") != "result" or reply.get("content") != "hi":
        raise RuntimeError(f"unexpected reply {reply}")


def check_hop(reply: dict[str, Any]) -> None:
    check_result(reply)
    downstream = reply.get("downstream") or []
    if len(downstream) != 1 or downstream[0].get("content") != "hi":
        raise RuntimeError(f"unexpected downstream {reply}")


def check_pong(reply: dict[str, Any]) -> None:
    if reply.get("t") != "pong":
        raise RuntimeError(f"unexpected reply {reply}")


def wall_ms(argv: list[str], expect: bytes | None = None, **env: str) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, env=child_env(**env), timeout=30)
    elapsed = (time.perf_counter() - t0) * 1000
    if out.returncode != 0 or (expect is not None and out.stdout != expect):
        raise RuntimeError(f"{argv} failed ({out.returncode}): {out.stdout!r} {out.stderr[-2000:]!r}")
    return elapsed


def importtime(argv: list[str], runs: int) -> dict[str, Any]:
    """Median per-module import costs (µs) of a command, from `python -X importtime`."""
    per_module: dict[str, list[tuple[int, int, int]]] = {}
    totals = []
    for _ in range(runs):
        out = subprocess.run([str(PYTHON), "-X", "importtime", *argv], capture_output=True, env=child_env())
        total = 0
        for line in out.stderr.decode().splitlines():
            if not line.startswith("import time:") or "self [us]" in line:
                continue
            self_us, cumulative_us, name = line[len("import time:") :].split("|", 2)
            depth = (len(name) - len(name.lstrip())) // 2
            per_module.setdefault(name.strip(), []).append((int(self_us), int(cumulative_us), depth))
            total += int(self_us)
        totals.append(total)

    def med(name: str, index: int) -> float:
        return statistics.median(v[index] for v in per_module[name])

    top_level = [n for n, v in per_module.items() if v[0][2] == 0]
    by_cumulative = sorted(top_level, key=lambda n: -med(n, 1))[:12]
    by_self = sorted(per_module, key=lambda n: -med(n, 0))[:12]
    return {
        "total_import_ms_median": round(statistics.median(totals) / 1000, 1),
        "top_level_by_cumulative_ms": {n: round(med(n, 1) / 1000, 1) for n in by_cumulative},
        "top_by_self_ms": {n: round(med(n, 0) / 1000, 1) for n in by_self},
        "modules": len(per_module),
    }


def bench_round_trips(ws: Workspace, iterations: int, cli_runs: int) -> dict[str, Any]:
    config = ws.config(
        "rt",
        {
            "a": {"callback": "bcb:echo", "connections": ["b"]},
            "b": {"callback": "bcb:echo"},
            "c": {"callback": "bcb:echo"},
            "s": {"callback": "bcb:echo"},  # for the plain send round trips, so a/b/c's histories stay equal
        },
    )
    system = System(config, ws.socket())
    out: dict[str, Any] = {}
    try:
        system.start()
        tree = system.discover()
        sock = Path(system.socket)
        warm = max(100, iterations // 10)
        with Client(sock, timeout=30) as client:
            # 4. the raw floor: a control-socket ping answered by the supervisor alone.
            timed_requests(client, lambda: {"t": "ping"}, warm, check_pong)
            ping = timed_requests(client, lambda: {"t": "ping"}, iterations, check_pong)
            log(f"ping p50 {percentile(ping, 0.5):.1f} us")
            # 3a. send to a lone callback agent.
            timed_requests(client, lambda: send_message("s"), warm, check_result)
            send = timed_requests(client, lambda: send_message("s"), iterations, check_result)
            log(f"in-process send p50 {percentile(send, 0.5):.1f} us")
            # 4. one hop: A >> B vs lone C, both `wait`, interleaved (alternating order each iteration).
            for _ in range(warm):
                client.request(send_message("a", wait=True))
                client.request(send_message("c", wait=True))
            hop_a: list[float] = []
            lone_c: list[float] = []
            for i in range(iterations):
                pair = [("a", hop_a, check_hop), ("c", lone_c, check_result)]
                for agent, samples, check in pair if i % 2 == 0 else reversed(pair):
                    samples.extend(timed_requests(client, lambda agent=agent: send_message(agent, True), 1, check))
            log(f"hop: A>>B p50 {percentile(hop_a, 0.5):.1f} us, lone C p50 {percentile(lone_c, 0.5):.1f} us")
            # Where the time goes: CPU per request of each process (schedstat), C alone then A>>B alone.
            cpu_runs = max(200, iterations // 2)
            pids = {"supervisor": tree.supervisor, **tree.agents, "client (this process)": os.getpid()}
            cpu: dict[str, dict[str, float]] = {}
            for label, agent, check in (("lone_c", "c", check_result), ("a_to_b", "a", check_hop)):
                before = {name: cpu_ns(pid) for name, pid in pids.items()}
                t0 = time.perf_counter_ns()
                timed_requests(client, lambda agent=agent: send_message(agent, True), cpu_runs, check)
                wall = (time.perf_counter_ns() - t0) / cpu_runs / 1000
                used = {name: (cpu_ns(pid) - before[name]) / cpu_runs / 1000 for name, pid in pids.items()}
                cpu[label] = {"wall_per_request": round(wall, 1)}
                cpu[label].update({name: round(us, 1) for name, us in used.items() if us >= 0.5})
            memory_after = {name: memory_mib(pid) for name, pid in tree.agents.items()}
            # A full collection inside agent c (its callback runs gc.collect()): copy-on-write exposure.
            gc_ms = float(client.request({**send_message("c"), "prompt": "__gc__", "stream": False})["content"])
            memory_after_gc = memory_mib(tree.agents["c"])

        # 3b. the whole `llmling send` process.
        argv = [LLMLING, "send", "c", "hi", "--socket", system.socket]
        for _ in range(3):
            wall_ms(argv, b"hi\n")
        cli = [wall_ms(argv, b"hi\n") for _ in range(cli_runs)]
        log(f"`llmling send` median {statistics.median(cli):.1f} ms")
        baseline_runs = max(5, cli_runs // 2)
        python_pass = [wall_ms([str(PYTHON), "-c", "pass"]) for _ in range(baseline_runs)]
        python_isolated = [wall_ms([str(PYTHON), "-I", "-S", "-c", "pass"]) for _ in range(baseline_runs)]
        import_cli = [wall_ms([str(PYTHON), "-c", "import llmling.cli.main"]) for _ in range(baseline_runs)]
        imports = importtime([LLMLING, "send", "c", "hi", "--socket", system.socket], 5)

        out = {
            "send_inprocess_us": summary(send, keep=False),
            "cli_send_ms": summary(cli),
            "cli_context_ms": {
                "python_-c_pass_median": round(statistics.median(python_pass), 1),
                "python_-I_-S_-c_pass_median": round(statistics.median(python_isolated), 1),
                "python_-c_import_llmling.cli.main_median": round(statistics.median(import_cli), 1),
                "cli_importtime": imports,
            },
            "ping_us": summary(ping, keep=False),
            "hop": {
                "a_to_b_wait_us": summary(hop_a, keep=False),
                "lone_c_wait_us": summary(lone_c, keep=False),
                "cpu_us_per_request": cpu,
                "per_hop_overhead_us": {
                    "paired_median": round(
                        statistics.median(a - c for a, c in zip(hop_a, lone_c, strict=True)), 1
                    ),
                    "p50": round(percentile(hop_a, 0.5) - percentile(lone_c, 0.5), 1),
                    "p90": round(percentile(hop_a, 0.9) - percentile(lone_c, 0.9), 1),
                    "p99": round(percentile(hop_a, 0.99) - percentile(lone_c, 0.99), 1),
                    "how": "percentile(A>>B send --wait) - percentile(lone C send --wait), same percentile",
                },
            },
            "callback_agent_memory_after_runs_mib": memory_after,
            "callback_agent_c_after_full_gc": {"memory_mib": memory_after_gc, "gc_collect_ms": gc_ms},
        }
        stop = system.sigint()
        out["rt_system_sigint"] = stop
    finally:
        system.close()
    return out


# -- main -------------------------------------------------------------------------------------------------------
def git_rev() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "-uno"], capture_output=True)
        return out.stdout.decode().strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return None


def verdicts(result: dict[str, Any]) -> dict[str, Any]:
    """Each target: measured, target, met. A target whose section did not run is left out."""
    startup, rt = result["startup"], result.get("round_trips", {})
    memory = startup["memory"]

    def verdict(measured: float | None, target: float, unit: str, ok: bool = True) -> dict[str, Any]:
        met = measured is not None and measured <= target and ok
        return {"measured": measured, "target": f"<= {target:g} {unit}", "met": met}

    def sigint_verdict(key: str) -> dict[str, Any]:
        stops = startup["sigint"][key]
        gone = stops["all_gone_ms"]["median"] if stops["all_gone_ms"] else None
        ok = all(code == 0 for code in stops["exit_codes"]) and stops["runs_with_leftovers"] == 0
        target = TARGETS["sigint_8_idle_all_gone_median_ms"]
        return {**verdict(gone, target, "ms (median), exit 0", ok), "exit_codes": stops["exit_codes"]}

    out: dict[str, Any] = {}
    if "callback_8" in startup["ready_ms"]:
        ready8 = startup["ready_ms"]["callback_8"]["median"]
        out["ready_8_callback"] = verdict(ready8, TARGETS["ready_8_callback_median_ms"], "ms (median)")
    if "litellm_8" in startup["ready_ms"]:
        llm8 = startup["ready_ms"]["litellm_8"]["median"]
        imp = startup["import_litellm_ms"]["median"]
        target = TARGETS["ready_8_litellm_over_import_ms"]
        statement = startup["import_litellm_statement_only_ms"]["median"]
        out["ready_8_litellm"] = {
            **verdict(round(llm8 - imp, 1), target, "ms: READY(8 litellm) - wall of `python -c 'import litellm'`"),
            "ready_ms_median": llm8,
            "import_litellm_wall_ms_median": imp,
            "import_statement_only_ms_median": statement,
            "ready_minus_import_statement_only_ms": round(llm8 - statement, 1),
        }
    uss: dict[str, float] = {}
    if "callback_8" in memory:
        uss["callback_at_ready"] = memory["callback_8"]["agent_uss_mib"]["max"]
    if "litellm_8" in memory:
        uss["litellm_at_ready"] = memory["litellm_8"]["agent_uss_mib"]["max"]
        uss["litellm_forkserver_agent_after_full_gc"] = memory["litellm_forkserver_gc_probe"][
            "agent_after_gc_mib"
        ]["uss"]
    if rt:
        uss["callback_after_runs"] = max(m["uss"] for m in rt["callback_agent_memory_after_runs_mib"].values())
        uss["callback_after_full_gc"] = rt["callback_agent_c_after_full_gc"]["memory_mib"]["uss"]
    if uss:
        out["agent_uss"] = {
            **verdict(max(uss.values()), TARGETS["agent_uss_max_mib"], "MiB (max over every agent measured)"),
            "max_by_case": uss,
        }
    if rt:
        out["hop_overhead"] = verdict(
            rt["hop"]["per_hop_overhead_us"]["p50"], TARGETS["hop_overhead_p50_us"], "µs p50"
        )
        out["cli_send"] = verdict(rt["cli_send_ms"]["median"], TARGETS["cli_send_median_ms"], "ms (median)")
    if "hub_routing_us" in result:
        out["hop_hub_routing_share (context)"] = verdict(
            result["hub_routing_us"]["median"], TARGETS["hop_overhead_p50_us"], "µs p50, the supervisor's share"
        )
    if "callback_8" in startup["sigint"]:
        out["sigint_8_idle"] = sigint_verdict("callback_8")
    if "litellm_8" in startup["sigint"]:
        out["sigint_8_idle_litellm (same target, for context)"] = sigint_verdict("litellm_8")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run, noisier)")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SECTIONS,
        default=SECTIONS,
        help="run only these sections (default: all)",
    )
    args = parser.parse_args()
    reps, llm_reps, iterations, cli_runs = (3, 2, 500, 10) if args.quick else (7, 5, 2000, 30)

    started = time.perf_counter()
    meta = {
        "quick": args.quick,
        "reps": reps,
        "litellm_reps": llm_reps,
        "iterations": iterations,
        "cli_runs": cli_runs,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "git": git_rev(),
        "llmling": LLMLING,
        "sections": args.only,
    }
    ws = Workspace()
    startup: dict[str, Any] = {"ready_ms": {}, "memory": {}, "sigint": {}}
    result: dict[str, Any] = {"meta": meta, "startup": startup}
    try:
        if "callback" in args.only:
            log("start-up, memory and SIGINT of callback agents ...")
            bench_startup(ws, reps, startup)
        if "litellm" in args.only:
            log("litellm agents ...")
            bench_litellm(ws, llm_reps, startup)
        if "rt" in args.only:
            log("round trips ...")
            result["round_trips"] = bench_round_trips(ws, iterations, cli_runs)
        if "hub" in args.only:
            log("hub routing share of a hop ...")
            result["hub_routing_us"] = summary(bench_hub(iterations))
    finally:
        ws.remove()
    meta["loadavg_end"] = os.getloadavg()
    meta["wall_s"] = round(time.perf_counter() - started, 1)
    result["targets"] = verdicts(result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
