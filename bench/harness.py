"""Benchmark plumbing: temp configs, one `llmling up` system driven through the real CLI, process trees,
memory from /proc, and exit waits on pidfds (no polling).

Everything started here is ended by `System.close()` (SIGINT to the process group, then SIGKILL after a
deadline), which `run.py` always calls, even on errors.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = Path(sys.executable)


def _llmling_exe() -> str:
    candidates = [PYTHON.parent / "llmling", ROOT / ".venv" / "bin" / "llmling"]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("llmling")
    if found is None:
        raise SystemExit("bench: cannot find the `llmling` executable (run with the project's venv python)")
    return found


LLMLING = _llmling_exe()
READY_MARK = b"' ready:"


def log(*parts: object) -> None:
    print("[bench]", *parts, file=sys.stderr, flush=True)


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LLMLING_SOCKET"}
    env.update(extra)
    return env


def machine() -> dict[str, object]:
    """The `meta` of a bench's JSON: Python, CPUs, load average and when."""
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def chain_meta(load_before: tuple[float, float, float], messages: int, clients: int) -> dict[str, object]:
    """The `meta` of a chain bench's JSON: the machine, the load before and after, how many messages."""
    return {
        **machine(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "messages": messages,
        "clients": clients,
        "chain": "a >> b >> c (callback agents), send with wait: 3 runs and 2 hops per message",
    }


# -- statistics ------------------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    data = sorted(values)
    if not data:
        return float("nan")
    pos = (len(data) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summary(values: list[float], digits: int = 1, keep: bool = True) -> dict[str, object]:
    """median/p90/p99/min/max (+ the samples when `keep`), rounded."""
    out: dict[str, object] = {
        "n": len(values),
        "median": round(percentile(values, 0.5), digits),
        "p90": round(percentile(values, 0.9), digits),
        "p99": round(percentile(values, 0.99), digits),
        "min": round(min(values), digits) if values else None,
        "max": round(max(values), digits) if values else None,
    }
    if keep:
        out["samples"] = [round(v, digits) for v in values]
    return out


# -- temp configs ----------------------------------------------------------------------------------------------
CALLBACK_MODULE = """\
import gc
import time


def echo(prompt):
    if prompt == "__gc__":  # a full collection inside the agent process: returns its duration in ms
        started = time.perf_counter()
        gc.collect()
        return f"{(time.perf_counter() - started) * 1000:.1f}"
    return prompt
"""


class Workspace:
    """A short temp dir under /tmp holding the callback module, the configs and the sockets."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="llb", dir="/tmp"))
        (self.dir / "bcb.py").write_text(CALLBACK_MODULE)
        self._sockets = 0

    def socket(self) -> str:
        self._sockets += 1
        path = f"{self.dir}/s{self._sockets}.sock"
        assert len(os.fsencode(path)) <= 107, path
        return path

    def config(self, name: str, agents: dict[str, dict[str, object]]) -> Path:
        lines = [f"name: {name}", "agents:"]
        for agent, settings in agents.items():
            lines.append(f"  {agent}:")
            for key, value in settings.items():
                lines.append(f"    {key}: {json.dumps(value)}")
        path = self.dir / f"{name}.yml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def callback_config(self, n: int) -> Path:
        return self.config(f"cb{n}", {f"a{i}": {"callback": "bcb:echo"} for i in range(n)})

    def litellm_config(self, n: int) -> Path:
        # Never called: api_base points at a closed local port.
        agent = {"model": "openai/x", "api_base": "http://127.0.0.1:9/v1"}
        return self.config(f"llm{n}", {f"m{i}": dict(agent) for i in range(n)})

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


# -- /proc -----------------------------------------------------------------------------------------------------
def ppid_map() -> dict[int, int]:
    out: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The comm field may hold spaces and parentheses: split after the last ')'.
        rest = stat[stat.rfind(b")") + 2 :].split()
        out[int(entry)] = int(rest[1])
    return out


def descendants(root: int) -> list[int]:
    parents = ppid_map()
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    out: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            out.append(child)
            todo.append(child)
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def smaps_rollup(pid: int) -> dict[str, int]:
    """Fields of /proc/PID/smaps_rollup in KiB."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[0].endswith(":") and parts[-1] == "kB":
                fields[parts[0][:-1]] = int(parts[1])
    return fields


def cpu_ns(pid: int) -> int:
    """CPU time (user + system, ns) of every thread of `pid`, from /proc/PID/task/*/schedstat."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/schedstat") as f:
            total += int(f.read().split()[0])
    return total


def memory_mib(pid: int) -> dict[str, float]:
    fields = smaps_rollup(pid)
    uss = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return {
        "uss": round(uss / 1024, 2),
        "pss": round(fields.get("Pss", 0) / 1024, 2),
        "rss": round(fields.get("Rss", 0) / 1024, 2),
    }


# -- exits -----------------------------------------------------------------------------------------------------
def open_pidfds(pids: list[int]) -> dict[int, int]:
    fds: dict[int, int] = {}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            fds[pid] = os.pidfd_open(pid)
    return fds


def wait_pidfds(fds: dict[int, int], deadline: float) -> dict[int, float]:
    """Block (poll(2) on the pidfds, no busy loop) until every process has exited or `deadline`
    (perf_counter) passes; returns pid -> perf_counter of its exit as seen here."""
    poller = select.poll()
    by_fd = {fd: pid for pid, fd in fds.items()}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    exited: dict[int, float] = {}
    while len(exited) < len(by_fd):
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            break
        for fd, _ in poller.poll(max(1, int(remaining * 1000))):
            now = time.perf_counter()
            if by_fd[fd] not in exited:
                exited[by_fd[fd]] = now
                poller.unregister(fd)
    return exited


def alive(pidfd: int) -> bool:
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return not poller.poll(0)


# -- one system ------------------------------------------------------------------------------------------------
@dataclass
class Tree:
    supervisor: int
    agents: dict[str, int]
    forkserver: int | None
    others: list[int] = field(default_factory=list)  # e.g. the multiprocessing resource tracker

    @property
    def all_pids(self) -> list[int]:
        pids = [self.supervisor, *self.agents.values(), *self.others]
        if self.forkserver is not None:
            pids.append(self.forkserver)
        return pids


class StartFailed(RuntimeError):
    pass


class System:
    """One `llmling up CONFIG --socket S` in its own session (so SIGINT to its group is a terminal's Ctrl+C)."""

    def __init__(self, config: Path, socket: str, extra_args: tuple[str, ...] = ()) -> None:
        self.config = config
        self.socket = socket
        # More `llmling up` options (e.g. `--dashboard 127.0.0.1:PORT`).
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None
        self.t_spawn = 0.0
        self.t_ready = 0.0
        self.stderr_lines: list[bytes] = []
        self._drain: threading.Thread | None = None
        self.tree: Tree | None = None
        # Every process of the system we have seen, as pidfds (safe to signal, pollable for exit).
        self._pidfds: dict[int, int] = {}

    # -- start ------------------------------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> float:
        """Start `llmling up` and block until its stderr says the system is ready. Returns ms spawn→ready."""
        argv = [LLMLING, "up", str(self.config), "--socket", self.socket, *self.extra_args]
        self.t_spawn = time.perf_counter()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            cwd=self.config.parent,
            # The run history (SQLite) goes to the workspace, never to the user's ~/.local/state.
            env=child_env(XDG_STATE_HOME=str(self.config.parent / "state")),
        )
        self._pidfds.update(open_pidfds([self.proc.pid]))
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        deadline = self.t_spawn + timeout
        buffer = b""
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise StartFailed(f"not ready after {timeout} s:\n{self._tail(buffer)}")
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            data = os.read(fd, 65536)
            now = time.perf_counter()
            if not data:
                raise StartFailed(f"`llmling up` exited ({self.proc.wait()}) before ready:\n{self._tail(buffer)}")
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            self.stderr_lines.extend(lines)
            ready = [line for line in lines if line.startswith(b"system '") and READY_MARK in line]
            if ready:
                self.t_ready = now
                if b" failed (" in ready[0]:
                    raise StartFailed(f"some agents failed to start:\n{self._tail(buffer)}")
                break
        if buffer:
            self.stderr_lines.append(buffer)
        # Keep the pipe drained while the system runs (its logs must never block it).
        self._drain = threading.Thread(target=self._drain_stderr, args=(fd,), daemon=True)
        self._drain.start()
        return (self.t_ready - self.t_spawn) * 1000

    def _drain_stderr(self, fd: int) -> None:
        with contextlib.suppress(OSError):
            while data := os.read(fd, 65536):
                self.stderr_lines.extend(data.split(b"\n"))

    def _tail(self, buffer: bytes = b"") -> str:
        lines = [*self.stderr_lines, buffer]
        return b"\n".join(lines[-30:]).decode(errors="replace")

    # -- inspect ----------------------------------------------------------------------------------------------
    def status(self) -> dict[str, object]:
        out = subprocess.run(
            [LLMLING, "status", "--json", "--socket", self.socket],
            capture_output=True,
            check=True,
            timeout=30,
            env=child_env(),
        )
        return json.loads(out.stdout)

    def discover(self) -> Tree:
        """Pids from `llmling status --json`, the forkserver and the rest of the tree from /proc."""
        assert self.proc is not None
        status = self.status()
        supervisor = int(status["pid"])  # type: ignore[arg-type]
        agents = {str(a["name"]): int(a["pid"]) for a in status["agents"]}  # type: ignore[union-attr]
        parents = ppid_map()
        forkservers = {parents.get(pid) for pid in agents.values()}
        forkserver = forkservers.pop() if len(forkservers) == 1 else None
        known = {supervisor, *agents.values(), forkserver}
        others = [pid for pid in descendants(supervisor) if pid not in known]
        not_ready = [a for a in status["agents"] if a.get("state") != "ready"]  # type: ignore[union-attr]
        if not_ready:
            raise StartFailed(f"agents not ready: {not_ready}\n{self._tail()}")
        self.tree = Tree(supervisor, agents, forkserver, others)
        self._pidfds.update(open_pidfds([p for p in self.tree.all_pids if p not in self._pidfds]))
        return self.tree

    # -- stop -------------------------------------------------------------------------------------------------
    def sigint(self, deadline_s: float = 10.0) -> dict[str, object]:
        """SIGINT to the process group (a terminal's Ctrl+C); wait (pidfds) until every process of the tree
        is gone.

        Returns ms from the signal to: the supervisor's exit, the last agent's exit, the forkserver's exit and
        the whole tree gone, and the supervisor's exit code. Escalates to SIGKILL after `deadline_s`.
        """
        assert self.proc is not None
        tree = self.tree or self.discover()
        fds = self._pidfds
        t0 = time.perf_counter()
        os.killpg(self.proc.pid, signal.SIGINT)
        exited = wait_pidfds(fds, t0 + deadline_s)
        leftover = [pid for pid in fds if pid not in exited]
        code = self._finish()

        def ms(pids: list[int]) -> float | None:
            watched = [p for p in pids if p in fds]
            if not watched or any(p not in exited for p in watched):
                return None
            return round((max(exited[p] for p in watched) - t0) * 1000, 1)

        return {
            "supervisor_ms": ms([tree.supervisor]),
            "agents_ms": ms(list(tree.agents.values())),
            "forkserver_ms": ms([tree.forkserver] if tree.forkserver else []),
            "all_gone_ms": None if leftover else ms(tree.all_pids),
            "exit_code": code,
            "leftover_pids": leftover,
            "processes": len(fds),
        }

    def _finish(self, deadline_s: float = 5.0) -> int | None:
        """Make sure every process we know of is gone; returns the supervisor's exit code."""
        assert self.proc is not None
        try:
            code = self.proc.wait(deadline_s)
        except subprocess.TimeoutExpired:
            log(f"`llmling up` (pid {self.proc.pid}) still running {deadline_s} s after SIGINT: SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait()
        # The forkserver and agents follow the supervisor out; give them the deadline too.
        wait_pidfds({p: fd for p, fd in self._pidfds.items() if alive(fd)}, time.perf_counter() + deadline_s)
        # pidfds cannot hit a recycled pid: kill only what is provably still ours.
        for pid, fd in self._pidfds.items():
            if alive(fd):
                log(f"process {pid} ({cmdline(pid)[:60]}) outlived its system: SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for fd in self._pidfds.values():
            os.close(fd)
        self._pidfds = {}
        if self._drain is not None:
            self._drain.join(2.0)
        return code

    def close(self) -> None:
        """Idempotent cleanup for error paths: SIGINT, then SIGKILL after 5 s."""
        if self.proc is None:
            return
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)
        if self._pidfds or self.proc.returncode is None:
            self._finish()

    def __enter__(self) -> System:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
