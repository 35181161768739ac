"""A seeded fuzzer of the control socket against a real supervisor (`llmling up` in a subprocess).

Each case is one connection carrying random frames: well-formed envelopes with random types and fields, random
bytes behind a valid length, truncated frames, lengths over the limit, deep nesting, JSON that is not an object,
invalid UTF-8, unhashable `t`/`id`/`re`, several frames in one write. After each batch: the supervisor is alive,
no agent restarted, a normal `send` answers, its RSS stays within a bound, and its log holds no traceback.

10,000 cases by default; `LLMLING_FUZZ_CASES=200000` (and `LLMLING_FUZZ_SEED=n`) for a longer run.
"""

from __future__ import annotations

import json
import os
import random
import socket
import string
import struct
from collections.abc import Callable
from typing import Any

from llmling.ipc.frames import DEFAULT_MAX_FRAME, HEADER, encode
from llmling.testing import SystemProcess
from tests.conftest import Systems

CASES = int(os.environ.get("LLMLING_FUZZ_CASES", "10000"))
SEED = int(os.environ.get("LLMLING_FUZZ_SEED", "20261130"))
BATCH = 1000
# The supervisor's RSS may grow by this much over the whole run (buffers, caches), not with the case count.
RSS_GROWTH_LIMIT = 64 * 1024 * 1024

CONFIG = """\
agents:
  echo:
    callback: cb:echo
  upper:
    callback: cb:upper
    connections: [echo]
"""

# Every request type the control socket knows, but `stop`; plus made-up ones.
TYPES = [
    "send",
    "status",
    "ping",
    "history",
    "subscribe",
    "triggers",
    "trigger",
    "background_stop",
    "background_list",
    "hello",
    "result",
    "chunk",
    "error",
    "run",
    "",
    "x" * 300,
]
FIELDS = ["id", "re", "agent", "prompt", "stream", "wait", "limit", "name", "enabled", "agents", "role", "token"]


class Fuzzer:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def text(self) -> str:
        rng = self.rng
        kind = rng.random()
        if kind < 0.5:
            return "".join(rng.choices(string.printable, k=rng.randrange(0, 40)))
        if kind < 0.8:  # any code point, lone surrogates included
            return "".join(chr(rng.randrange(0, 0x110000)) for _ in range(rng.randrange(0, 20)))
        return "\x01" * rng.randrange(0, 2000)

    def value(self, depth: int = 0) -> Any:
        rng = self.rng
        choice = rng.randrange(10 if depth < 4 else 7)
        if choice == 0:
            return None
        if choice == 1:
            return rng.choice([True, False])
        if choice == 2:
            return rng.randrange(-(2**70), 2**70)
        if choice == 3:
            return rng.choice([0.5, -1.0, 1e308, float("nan"), float("inf"), 0.0])
        if choice in (4, 5, 6):
            return self.text()
        if choice in (7, 8):
            return [self.value(depth + 1) for _ in range(rng.randrange(0, 4))]
        return {self.text(): self.value(depth + 1) for _ in range(rng.randrange(0, 4))}

    def message(self) -> dict[str, Any]:
        rng = self.rng
        message: dict[str, Any] = {"t": rng.choice(TYPES) if rng.random() < 0.9 else self.value()}
        if rng.random() < 0.8:
            message["id"] = self.text() if rng.random() < 0.9 else self.value()
        for name in rng.sample(FIELDS, rng.randrange(0, 5)):
            message[name] = self.value()
        if message["t"] == "send" and rng.random() < 0.3:  # some real runs
            message.update(agent=rng.choice(["echo", "upper"]), prompt=self.text(), wait=rng.random() < 0.3)
        if message["t"] == "trigger" or message["t"] == "background_stop":
            message["agent"] = self.text()  # never a real agent: no state changes
        return message

    def body(self) -> bytes:
        """The bytes of one frame's body."""
        rng = self.rng
        kind = rng.randrange(8)
        if kind < 3:
            return _json(self.message())
        if kind == 3:
            return rng.randbytes(rng.randrange(0, 200))
        if kind == 4:
            depth = rng.choice([10, 500, 5000, 200_000])
            opener, closer = rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
            return opener * depth + b"1" + closer * depth
        if kind == 5:
            return _json(self.value())
        if kind == 6:
            data = bytearray(_json(self.message()))
            data[rng.randrange(len(data))] = rng.choice([0xFF, 0xC0, 0x80, 0xED])
            return bytes(data)
        return b'{"t": %s, "id": "1", "re": %s}' % (
            rng.choice([b"[1]", b"{}", b'"ping"']),
            rng.choice([b"[]", b'{"a": 1}', b'"x"', b"null"]),
        )

    def case(self) -> bytes:
        """The bytes one connection sends."""
        rng = self.rng
        kind = rng.random()
        if kind < 0.6:
            return b"".join(_frame(self.body()) for _ in range(rng.randrange(1, 4)))
        if kind < 0.75:  # truncated: cut anywhere, header included
            data = _frame(self.body())
            return data[: rng.randrange(0, len(data))]
        if kind < 0.85:  # a length the body does not match, or over the limit
            length = rng.choice([DEFAULT_MAX_FRAME + 1, 2**32 - 1, rng.randrange(0, 100)])
            return struct.pack("!I", length) + self.body()[:200]
        if kind < 0.95:  # a valid request, then garbage
            return encode({"t": "ping", "id": "p"}) + rng.randbytes(rng.randrange(1, 64))
        return rng.randbytes(rng.randrange(1, 64))  # no framing at all (an HTTP client, say)


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode(errors="surrogatepass")


def _frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


def exchange(path: str, data: bytes) -> None:
    """One connection: send, end our side, read until the supervisor closes it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(path)
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(1 << 16):
                pass
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed on us after a bad frame: expected


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def check_healthy(system: SystemProcess, restarts: dict[str, int], baseline: int, done: int) -> None:
    assert system.process is not None and system.process.poll() is None, f"supervisor died after {done} cases"
    status = system.status()
    assert {a["name"]: a["restarts"] for a in status["agents"]} == restarts, f"an agent restarted ({done} cases)"
    reply = system.request({"t": "send", "agent": "echo", "prompt": f"after {done}"})
    assert reply["content"] == f"echo: after {done}", reply
    growth = rss(system.pid) - baseline
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew by {growth} bytes after {done} cases"
    log = system.log_text()
    assert "Traceback" not in log and "Fatal error" not in log, log[-4000:]


def test_fuzz_the_control_socket(systems: Systems) -> None:
    system = systems.start(CONFIG)
    restarts = {a["name"]: a["restarts"] for a in system.status()["agents"]}
    baseline = rss(system.pid)
    fuzzer = Fuzzer(SEED)
    path = os.fspath(system.socket)
    send: Callable[[bytes], None] = lambda data: exchange(path, data)  # noqa: E731
    for done in range(1, CASES + 1):
        send(fuzzer.case())
        if done % BATCH == 0 or done == CASES:
            check_healthy(system, restarts, baseline, done)
