"""Hostile input against a real system: the figures of the README's reliability table (IPC, config, descriptors).

    .venv/bin/python bench/chaos.py [--llmling PATH] [--only NAME ...]

Prints ONE JSON object on stdout: `{"llmling": PATH, "results": {scenario: {...}}}`; progress on stderr. It uses
only the standard library and raw sockets, so it can drive any version of llmling: `--llmling
/path/to/old/.venv/bin/llmling` measures the code before a change. Every system it starts is ended (SIGINT, then
SIGKILL of its process group).

Scenarios: `idle` (500 connections that never send), `no_reader` (a client that pipelines requests and never reads
its replies), `decode` (unhashable `t`, 200,000-deep JSON), `prompt_edge` (a prompt whose send frame fits 8 MiB but
whose run frame does not), `big_reply` (an agent reply over the frame), `wait_tree` (`send --wait` whose reply with
its downstream result exceeds a frame), `fd_flood` (RLIMIT_NOFILE=1024, 1,100 connections; an agent killed during
the flood), `config` (alias bomb, duplicate keys, binary / invalid UTF-8 / 5,000-deep files), `runtime_dir` (a
runtime dir owned by another uid; needs root).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HEADER = struct.Struct("!I")
MAX_FRAME = 8 * 1024 * 1024
CALLBACKS = """
import os


def echo(prompt):
    return f"echo: {prompt}"


def same(prompt):
    return prompt


def pid(prompt):
    return str(os.getpid())


def flood(prompt):
    return "\\x01" * int(prompt)
"""
CONFIG = """\
agents:
  echo: {callback: cb:echo}
  big: {callback: cb:flood}
  other: {callback: cb:pid}
  first: {callback: cb:same, connections: [second]}
  second: {callback: cb:same}
"""
ALIAS_BOMB = "".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n',
        *(f"{c}: &{c} [{','.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)),
    ]
)


def log(*parts: object) -> None:
    print("[chaos]", *parts, file=sys.stderr, flush=True)


def frame(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
    return HEADER.pack(len(body)) + body


def read_frames(data: bytes) -> list[dict[str, Any]]:
    frames, offset = [], 0
    while len(data) - offset >= 4:
        (length,) = HEADER.unpack_from(data, offset)
        if len(data) - offset - 4 < length:
            break
        frames.append(json.loads(data[offset + 4 : offset + 4 + length]))
        offset += 4 + length
    return frames


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


class System:
    """`llmling up` of CONFIG in a temp dir, its own process group."""

    def __init__(self, exe: str, root: Path, limits: Callable[[], None] | None = None) -> None:
        self.exe = exe
        self.dir = Path(tempfile.mkdtemp(dir="/tmp", prefix="chaos-"))
        (self.dir / "cb.py").write_text(CALLBACKS)
        self.config = self.dir / "sys.yml"
        self.config.write_text(CONFIG)
        self.socket = self.dir / "s.sock"
        self.log = self.dir / "up.log"
        env = {k: v for k, v in os.environ.items() if k != "LLMLING_SOCKET"}
        env.update(XDG_STATE_HOME=str(self.dir / "state"), XDG_RUNTIME_DIR=str(self.dir))
        self.env = env

        def setup() -> None:
            os.setpgrp()
            if limits is not None:
                limits()

        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [exe, "up", str(self.config), "--socket", str(self.socket)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=env,
                preexec_fn=setup,
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError, KeyError):
                if all(a["state"] == "ready" for a in self.status()["agents"]):
                    return
            if self.process.poll() is not None:
                raise RuntimeError(f"up exited: {self.log.read_text()}")
            time.sleep(0.1)
        raise RuntimeError("up did not get ready")

    @property
    def pid(self) -> int:
        return self.process.pid

    def request(self, message: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        message.setdefault("id", "chaos")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.socket))
            sock.sendall(frame(message))
            data = b""
            while True:
                for reply in read_frames(data):
                    if reply.get("t") != "chunk":
                        return reply
                part = sock.recv(1 << 20)
                if not part:
                    raise ConnectionError("closed")
                data += part

    def status(self) -> dict[str, Any]:
        return self.request({"t": "status"}, timeout=5)

    def restarts(self) -> int:
        return sum(a["restarts"] for a in self.status()["agents"])

    def alive(self) -> bool:
        return self.process.poll() is None

    def cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.exe, *args, "--socket", str(self.socket)],
            input=input,
            capture_output=True,
            text=True,
            timeout=300,
            env=self.env,
        )

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def system(exe: str, limits: Callable[[], None] | None = None) -> Iterator[System]:
    running = System(exe, Path(tempfile.gettempdir()), limits)
    try:
        yield running
    finally:
        running.close()


def raw_exchange(path: Path, data: bytes) -> tuple[list[dict[str, Any]], bool]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        with contextlib.suppress(OSError):
            sock.sendall(data)
        received = b""
        try:
            while part := sock.recv(1 << 16):
                received += part
        except (ConnectionResetError, TimeoutError):
            pass
    return read_frames(received), True


# -- scenarios -------------------------------------------------------------------------------------------------
def idle(exe: str) -> dict[str, Any]:
    with system(exe) as sys_:
        before = fds(sys_.pid)
        socks = []
        for _ in range(500):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(sys_.socket))
            socks.append(sock)
        time.sleep(1)
        during = fds(sys_.pid)
        time.sleep(12)  # past the idle timeout (10 s)
        after = fds(sys_.pid)
        for sock in socks:
            sock.close()
        return {"fds_before": before, "fds_with_500_idle": during, "fds_12s_later": after}


def no_reader(exe: str) -> dict[str, Any]:
    with system(exe) as sys_:
        before = rss_mb(sys_.pid)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(sys_.socket))
        sock.setblocking(False)
        request = frame({"t": "status", "id": "s"}) * 256
        sent, peak, deadline = 0, before, time.monotonic() + 15
        while time.monotonic() < deadline and sent < 400_000:
            try:
                sock.send(request)
                sent += 256
            except BlockingIOError:
                time.sleep(0.01)
            except OSError:
                break  # dropped by the supervisor
            peak = max(peak, rss_mb(sys_.pid))
        peak = max(peak, rss_mb(sys_.pid))
        sock.close()
        time.sleep(3)
        return {
            "rss_mb_before": before,
            "rss_mb_peak": peak,
            "rss_mb_after_close": rss_mb(sys_.pid),
            "requests_sent": sent,
            "status_answers": sys_.status()["name"] is not None,
        }


def decode(exe: str) -> dict[str, Any]:
    cases = {
        "unhashable_t": b'{"t": [1], "id": "x"}',
        "unhashable_re": b'{"t": "result", "re": ["a"]}',
        "deep_json_200000": b"[" * 200_000 + b"]" * 200_000,
    }
    out: dict[str, Any] = {}
    with system(exe) as sys_:
        for name, body in cases.items():
            frames, _ = raw_exchange(sys_.socket, HEADER.pack(len(body)) + body)
            out[name] = {"error_frames": sum(1 for f in frames if f.get("t") == "error")}
        out["fatal_error_on_transport_in_log"] = "Fatal error on transport" in sys_.log.read_text(errors="replace")
        out["alive"] = sys_.alive()
    return out


def prompt_edge(exe: str) -> dict[str, Any]:
    with system(exe) as sys_:
        before = sys_.restarts()
        # A send frame of exactly the limit less 4 bytes: it fits; the run frame (more ids) does not.
        empty = len(frame({"t": "send", "agent": "echo", "prompt": "", "id": "chaos"})) - 4
        prompt = "x" * (MAX_FRAME - empty - 4)
        try:
            reply = sys_.request({"t": "send", "agent": "echo", "prompt": prompt, "id": "chaos"}, timeout=60)
            answer = reply.get("error") or "result"
        except OSError as exc:
            answer = f"connection lost: {exc}"
        time.sleep(1)
        cli = sys_.cli("send", "echo", "-", input="\x01" * (1536 * 1024))
        return {
            "reply": answer[:120],
            "agent_restarts": sys_.restarts() - before,
            "cli_1_5_MiB_control_bytes": {"exit": cli.returncode, "stderr": cli.stderr.strip()[-160:]},
        }


def big_reply(exe: str) -> dict[str, Any]:
    with system(exe) as sys_:
        before = sys_.restarts()
        try:
            reply = sys_.request({"t": "send", "agent": "big", "prompt": str(1536 * 1024)}, timeout=60)
            answer = reply.get("error") or "result"
        except OSError as exc:
            answer = f"connection lost: {exc}"
        time.sleep(1)
        return {"reply": answer[:120], "agent_restarts": sys_.restarts() - before}


def wait_tree(exe: str) -> dict[str, Any]:
    with system(exe) as sys_:
        done = sys_.cli("send", "first", "-", "--wait", input="x" * (4608 * 1024))
        return {
            "exit": done.returncode,
            "traceback": "Traceback" in done.stderr,
            "stderr_lines": len(done.stderr.splitlines()),
            "stderr_last": done.stderr.strip().splitlines()[-1][:160] if done.stderr.strip() else "",
        }


def fd_flood(exe: str) -> dict[str, Any]:
    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    with system(exe, low_limit) as sys_:
        victim = next(a for a in sys_.status()["agents"] if a["name"] == "other")
        socks = []
        refused = 0
        for _ in range(1100):
            sock = connect_patiently(sys_.socket)
            if sock is None:  # the backlog stayed full for 2 s: the supervisor is not accepting
                refused += 1
                if refused >= 3:
                    break
                continue
            socks.append(sock)
        time.sleep(2)
        peak = fds(sys_.pid)
        os.kill(victim["pid"], signal.SIGKILL)
        time.sleep(5)
        started = time.monotonic()
        status_during = sys_.cli("status")
        status_s = round(time.monotonic() - started, 1)
        log_text = sys_.log.read_text(errors="replace")
        for sock in socks:
            sock.close()
        time.sleep(3)
        states = {}
        with contextlib.suppress(OSError):
            states = {a["name"]: a["state"] for a in sys_.status()["agents"]}
        return {
            "connections_made": len(socks),
            "connects_timed_out": refused,
            "supervisor_fds_peak": peak,
            "status_during_flood_exit": status_during.returncode,
            "status_during_flood_s": status_s,
            "killed_agent_ready_again": "ready again" in log_text,
            "too_many_open_files_in_log": "Too many open files" in log_text,
            "agent_states_after": states,
            "alive": sys_.alive(),
        }


def connect_patiently(path: Path, timeout: float = 2.0) -> socket.socket | None:
    """Connect; while the listener's backlog is full (EAGAIN), retry for up to `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(str(path))
        except BlockingIOError:
            sock.close()
            time.sleep(0.005)
            continue
        return sock
    return None


def config(exe: str) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="chaos-config-"))
    out: dict[str, Any] = {}
    files = {
        "valid_reference": b"agents:\n  a: {callback: m:f}\n",
        "alias_bomb": ALIAS_BOMB.encode(),
        "duplicate_agents_key": b"agents:\n  a: {callback: m:f}\nagents:\n  b: {callback: m:g}\n",
        "duplicate_agent_name": b"agents:\n  a: {callback: m:f}\n  a: {callback: m:g}\n",
        "binary": b"agents:\n  a: \x00\x01\x02",
        "invalid_utf8": b"agents:\n  a: {callback: m:f}\n  b: \xff\xfe\n",
        "deep_5000": b"agents: " + b"[" * 5000 + b"]" * 5000 + b"\n",
    }

    def caps() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 * 1024**3, 2 * 1024**3))
        resource.setrlimit(resource.RLIMIT_CPU, (30, 30))

    try:
        for name, data in files.items():
            path = work / f"{name}.yml"
            path.write_bytes(data)
            started = time.monotonic()
            done = subprocess.run(
                [exe, "validate", str(path)], capture_output=True, text=True, timeout=120, preexec_fn=caps
            )
            out[name] = {
                "exit": done.returncode,
                "seconds": round(time.monotonic() - started, 2),
                "traceback": "Traceback" in done.stderr,
                "message": (done.stderr.strip().splitlines() or [""])[-1].replace(str(work) + "/", "")[:140],
            }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out["alias_bomb"]["caps"] = "RLIMIT_AS 2 GiB, RLIMIT_CPU 30 s"
    return out


def runtime_dir(exe: str) -> dict[str, Any]:
    if os.getuid() != 0:
        return {"skipped": "needs root"}
    work = Path(tempfile.mkdtemp(dir="/tmp", prefix="chaos-rt-"))
    try:
        (work / "cb.py").write_text(CALLBACKS)
        (work / "sys.yml").write_text("agents:\n  echo: {callback: cb:echo}\n")
        (work / "llmling").mkdir(mode=0o755)
        os.chown(work / "llmling", 65534, 65534)
        env = {k: v for k, v in os.environ.items() if k != "LLMLING_SOCKET"}
        env.update(XDG_RUNTIME_DIR=str(work), XDG_STATE_HOME=str(work / "state"))
        done = subprocess.run(
            [exe, "up", str(work / "sys.yml")], capture_output=True, text=True, timeout=120, env=env
        )
        return {
            "exit": done.returncode,
            "message": done.stderr.strip().splitlines()[-1].replace(str(work), "<dir>"),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


SCENARIOS: dict[str, Callable[[str], dict[str, Any]]] = {
    "idle": idle,
    "no_reader": no_reader,
    "decode": decode,
    "prompt_edge": prompt_edge,
    "big_reply": big_reply,
    "wait_tree": wait_tree,
    "fd_flood": fd_flood,
    "config": config,
    "runtime_dir": runtime_dir,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(sys.executable).parent / "llmling"
    parser.add_argument("--llmling", default=str(default), help="the llmling executable to measure")
    parser.add_argument("--only", nargs="*", choices=sorted(SCENARIOS), help="run only these scenarios")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    for name in args.only or SCENARIOS:
        log(name)
        try:
            results[name] = SCENARIOS[name](args.llmling)
        except Exception as exc:
            results[name] = {"failed": f"{type(exc).__name__}: {exc}"[:300]}
        log(name, json.dumps(results[name]))
    print(json.dumps({"llmling": args.llmling, "results": results}, indent=2))


if __name__ == "__main__":
    main()
