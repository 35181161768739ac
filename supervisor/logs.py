"""Every agent's output, kept by the supervisor: `llmling logs [AGENT] [-f] [-n N] [--json]`.

Agent processes send their loguru records and the lines written to their fd 1/2 as `log` frames
(`agent_proc/output.py`). For each line the supervisor
- logs it to its own stderr bound with the agent's name (`[analyzer] …`: `up`'s terminal or the journal);
- keeps it in the agent's ring (at most `RING_LINES` lines and `RING_BYTES` characters of text; the oldest go);
- appends it to `<state_dir>/logs/<agent>.log` (JSON lines), rotated at `FILE_BYTES` with `FILE_BACKUPS` older
  files (`<agent>.log.1` is the newest of them);
- offers it to the clients that follow (`logs` with `follow`), which never slow the system: while a client's
  unsent bytes exceed `BUFFER_LIMIT` its lines are dropped and counted (as for `subscribe`).

Control request: `{"t":"logs","id",["agent"],["lines":N],["follow":bool]}` → `chunk` frames
`{"event":{"event":"log","agent","ts","stream","level","text"}}`, the last N lines first (merged by time); without
`follow` a final `{"t":"ok","count":N,"received":{agent:n},"dropped":{agent:n}}` (lines received and lost since
the start), with it the stream goes on until the client disconnects.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from loguru import logger

from llmling.errors import UnknownAgentError
from llmling.ipc.peer import Peer
from llmling.names import unknown
from llmling.supervisor.control import BadRequest, field
from llmling.supervisor.events import BUFFER_LIMIT, Subscription

if TYPE_CHECKING:
    from llmling.supervisor.system import Supervisor

Message = dict[str, Any]
# Lines and characters of text an agent's ring keeps.
RING_LINES = 2000
RING_BYTES = 1 << 20
# Size of one log file before it is rotated, and how many rotated files are kept.
FILE_BYTES = 10 << 20
FILE_BACKUPS = 3
# The most lines a `logs` request may ask for, and the text the backlog of one reply may carry.
MAX_LINES = 10_000
BACKLOG_BYTES = 4 << 20
# Lines one `log` frame from an agent may carry (the agent sends at most 200).
FRAME_LINES = 1000
STREAMS = ("log", "stdout", "stderr")
LEVELS = {"TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"}


class Ring:
    """One agent's last lines. Invariant: `size` is the sum of the texts' lengths in `entries`."""

    __slots__ = ("entries", "size")

    def __init__(self) -> None:
        self.entries: collections.deque[Message] = collections.deque()
        self.size = 0

    def add(self, entry: Message) -> None:
        self.entries.append(entry)
        self.size += len(entry["text"])
        while len(self.entries) > RING_LINES or (self.size > RING_BYTES and len(self.entries) > 1):
            self.size -= len(self.entries.popleft()["text"])


class RotatingFile:
    """`<folder>/<agent>.log`, JSON lines, rotated by size. Opened on first write; errors turn it off (logged)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self._size = 0
        self.broken = False

    def write(self, lines: list[str]) -> None:
        if self.broken or not lines:
            return
        try:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                self._file = self.path.open("a", encoding="utf-8")
                self._size = self._file.tell()
            for line in lines:
                if self._size >= FILE_BYTES:
                    self._rotate()
                assert self._file is not None
                self._file.write(line)
                self._size += len(line)
            self._file.flush()
        except OSError as exc:
            self.broken = True
            logger.bind(agent="logs").warning("cannot write {}: {}; its log file is off", self.path, exc)

    def _rotate(self) -> None:
        self.close()
        for index in range(FILE_BACKUPS - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{index + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._file = self.path.open("a", encoding="utf-8")
        self._size = 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _entry(agent: str, item: Any, replica: int | None = None) -> Message | None:
    """A checked line of an agent's `log` frame, or None when it is malformed. `replica`: the number of the
    process among the agent's replicas (only when it has more than one)."""
    if not isinstance(item, dict):
        return None
    ts, stream, level, text = item.get("ts"), item.get("stream"), item.get("level"), item.get("text")
    if not isinstance(ts, int | float) or stream not in STREAMS or not isinstance(text, str):
        return None
    entry = {
        "event": "log",
        "agent": agent,
        "ts": float(ts),
        "stream": stream,
        "level": level if isinstance(level, str) and level in LEVELS else "INFO",
        "text": text,
    }
    if replica is not None:
        entry["replica"] = replica
    return entry


class LogService:
    """The rings, files and followers of every agent's output. A supervisor Service (no tasks of its own)."""

    name = "logs"

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor
        self.folder = supervisor.config.state_path / "logs"
        self.rings = {name: Ring() for name in supervisor.config.agents}
        self.files = {name: RotatingFile(self.folder / f"{name}.log") for name in supervisor.config.agents}
        self.followers: list[Subscription] = []
        # Per agent: lines received, and lines lost (dropped by the agent while its connection was full, or
        # malformed); every line an agent produced is counted in exactly one of them.
        self.received: dict[str, int] = dict.fromkeys(supervisor.config.agents, 0)
        self.dropped: dict[str, int] = dict.fromkeys(supervisor.config.agents, 0)
        supervisor.control.register("logs", self._on_request)

    async def start(self) -> None:
        """Nothing to start: lines are kept from the first agent's hello on."""

    async def stop(self) -> None:
        """Close the files (a line that comes later, during the shutdown, opens its file again)."""
        for file in self.files.values():
            file.close()

    # -- from the agents ------------------------------------------------------------------------------------
    def on_agent_log(self, agent: str, message: Message, replica: int | None = None) -> None:
        """A `log` frame of `agent`'s process (replica number `replica` of several)."""
        items = message.get("lines")
        dropped = message.get("dropped")
        if isinstance(dropped, int) and dropped > 0:
            self.dropped[agent] += dropped
            logger.bind(agent=agent).warning(
                "{} lines of output dropped (the agent produced them faster than they could be sent)", dropped
            )
        if not isinstance(items, list):
            return
        ring, written = self.rings[agent], []
        log = logger.bind(agent=agent if replica is None else f"{agent}#{replica}")
        for item in items[:FRAME_LINES]:
            entry = _entry(agent, item, replica)
            if entry is None:
                self.dropped[agent] += 1
                continue
            self.received[agent] += 1
            ring.add(entry)
            written.append(json.dumps(entry, ensure_ascii=False) + "\n")
            text = entry["text"] if entry["stream"] == "log" else f"{entry['stream']}: {entry['text']}"
            log.log(entry["level"], "{}", text)
            for follower in list(self.followers):
                if not follower.peer.is_open:
                    self.followers.remove(follower)
                elif follower.wants(entry):
                    follower.offer(entry, BUFFER_LIMIT)
        self.files[agent].write(written)

    # -- the `logs` request ---------------------------------------------------------------------------------
    def backlog(self, agent: str | None, count: int) -> list[Message]:
        """The last `count` lines of `agent` (None: of every agent, merged by time), oldest first."""
        rings = [self.rings[agent]] if agent is not None else list(self.rings.values())
        merged = sorted((entry for ring in rings for entry in ring.entries), key=lambda entry: entry["ts"])
        chosen, size = [], 0
        for entry in reversed(merged[-count:] if count else []):
            size += len(entry["text"])
            if size > BACKLOG_BYTES:
                break
            chosen.append(entry)
        chosen.reverse()
        return chosen

    def _on_request(self, peer: Peer, message: Message) -> None:
        agent = field(message, "agent", (str, type(None)), default=None)
        count = field(message, "lines", int, 50)
        follow = field(message, "follow", bool, False)
        if agent is not None and agent not in self.rings:
            raise UnknownAgentError(unknown("agent", agent, self.rings))
        if not 0 <= count <= MAX_LINES:
            raise BadRequest(f"field 'lines' must be between 0 and {MAX_LINES}")
        entries = self.backlog(agent, count)
        for entry in entries:
            peer.reply(message, {"t": "chunk", "event": entry})
        if follow:
            self.followers.append(Subscription(peer, message, frozenset([agent]) if agent else None))
        else:
            names = [agent] if agent is not None else list(self.rings)
            peer.reply(
                message,
                {
                    "t": "ok",
                    "count": len(entries),
                    "received": {name: self.received[name] for name in names},
                    "dropped": {name: self.dropped[name] for name in names},
                },
            )


__all__ = ["FILE_BACKUPS", "FILE_BYTES", "RING_BYTES", "RING_LINES", "LogService", "Ring", "RotatingFile"]
