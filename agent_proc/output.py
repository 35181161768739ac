"""The agent's output goes to the supervisor: its loguru records and everything written to fd 1 and 2.

`AgentOutput.install(peer)` (after the hello) does three things:
- a loguru sink turns each record into a line `{ts, stream: "log", level, text}`;
- fd 1 and fd 2 are replaced (dup2) by the write ends of two pipes, so `print()`, `sys.stderr`, C extensions and
  child processes that inherit them all land in the pipes; a reader thread turns their bytes into lines
  (`stream: "stdout"`/`"stderr"`). A thread, not the event loop: code that blocks the loop while printing still
  has its pipe drained, so it never blocks on a full pipe;
- lines wait in a bounded queue and go to the supervisor from the event loop as `log` frames
  `{"t":"log","lines":[…],"dropped":N}`.

Bounds: a line is cut at `MAX_LINE` characters; at most `MAX_PENDING` lines wait for the loop; a frame holds at
most `FRAME_LINES` lines; while the connection's unsent bytes exceed `HIGH_WATER` (the supervisor is slow) lines
are dropped. Dropped lines are counted and the count travels with the next frame. What cannot reach the supervisor
(the connection is gone, the loop has ended) is written to the original stderr instead. `close()` sends what is
left and gives fd 1 and 2 back.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import os
import selectors
import sys
import termios
import threading
import time
from typing import Any, Literal, TypedDict

from loguru import logger

from llmling.ipc.peer import Peer
from llmling.logs import add_sink, redact

# Characters of one line; the rest is cut (ending with "…").
MAX_LINE = 4096
# Lines waiting for the event loop; more are dropped and counted.
MAX_PENDING = 5000
# Lines per `log` frame (MAX_LINE x FRAME_LINES stays well under the 8 MiB frame limit, even JSON-escaped).
FRAME_LINES = 200
# Unsent bytes on the connection to the supervisor above which lines are dropped.
HIGH_WATER = 1 << 20
# Seconds before a flush that found the connection full tries again.
RETRY_AFTER = 0.1
# Bytes read from a pipe at once; a partial line longer than MAX_LINE bytes is sent as it is.
READ_SIZE = 1 << 16
# Seconds `close()` waits for the pipes to be read empty, looking every DRAIN_STEP seconds.
CLOSE_GRACE = 1.0
DRAIN_STEP = 0.01

# How records logged after close() (straight to the original stderr) look.

Stream = Literal["log", "stdout", "stderr"]


class LogLine(TypedDict):
    """One line of an agent's output, as the `log` frame carries it."""

    ts: float  # Unix time it was written
    stream: Stream
    level: str  # loguru's level name; INFO for stdout, WARNING for stderr
    text: str  # without the trailing newline; a log record with a traceback spans several lines


STREAM_LEVELS: dict[Stream, str] = {"stdout": "INFO", "stderr": "WARNING"}


def _cut(text: str) -> str:
    return text if len(text) <= MAX_LINE else text[: MAX_LINE - 1] + "…"


class AgentOutput:
    """Owns the pipes, the reader thread and the queue of lines for one agent process.

    Invariant: `_pending`, `_dropped` and `_scheduled` are only touched under `_lock` (the reader thread, loguru's
    callers and the loop all add lines); `_scheduled` is true while a `flush` is queued on the loop.
    """

    def __init__(self, peer: Peer, loop: asyncio.AbstractEventLoop, level: str | None) -> None:
        self._peer = peer
        self._level = level
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: collections.deque[LogLine] = collections.deque()
        self._dropped = 0
        self._scheduled = False
        self._sink_id: int | None = None
        # The original fd 1 and 2 (duplicates), given back by close() and used for what cannot be sent.
        self._saved: dict[int, int] = {}
        # Read end of each pipe → the stream it carries.
        self._readers: dict[int, Stream] = {}
        self._thread: threading.Thread | None = None

    @classmethod
    def install(cls, peer: Peer, level: str | None) -> AgentOutput:
        """Route loguru (at `level` and above; no log lines when None, as in quiet library use) and fd 1/2 to
        the supervisor; returns the owner to close()."""
        output = cls(peer, asyncio.get_running_loop(), level)
        output._capture_fds()
        logger.remove()
        if level is not None:
            output._sink_id = logger.add(
                output._sink, level=level, format="{message}", backtrace=False, diagnose=False, catch=True
            )
        return output

    # -- producers (any thread) -----------------------------------------------------------------------------
    def add(self, stream: Stream, level: str, text: str) -> None:
        # Redacted here, before the line leaves the process: a print() may carry a key as well as a log line.
        line = LogLine(ts=time.time(), stream=stream, level=level, text=_cut(redact(text)))
        with self._lock:
            if len(self._pending) >= MAX_PENDING:
                self._dropped += 1
            else:
                self._pending.append(line)
            if self._scheduled:
                return
            self._scheduled = True
        self._schedule()

    def _schedule(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self.flush)
        except RuntimeError:  # the loop has ended: nothing will send it
            self._fallback(self._take()[0])

    def _sink(self, message: Any) -> None:
        record = message.record
        self.add("log", record["level"].name, str(message).rstrip("\n"))

    def _read_pipes(self) -> None:
        """The reader thread: lines from both pipes until both reach EOF (close() gave fd 1 and 2 back)."""
        partial = dict.fromkeys(self._readers, b"")
        with selectors.DefaultSelector() as selector:
            for fd in self._readers:
                selector.register(fd, selectors.EVENT_READ)
            while partial:
                for key, _ in selector.select():
                    fd = int(key.fd)
                    try:
                        data = os.read(fd, READ_SIZE)
                    except OSError:
                        data = b""
                    stream = self._readers[fd]
                    if not data:  # EOF: flush the last partial line, stop watching this pipe
                        rest = partial.pop(fd)
                        if rest:
                            self.add(stream, STREAM_LEVELS[stream], rest.decode(errors="replace"))
                        selector.unregister(fd)
                        os.close(fd)
                        continue
                    *lines, rest = (partial[fd] + data).split(b"\n")
                    if len(rest) > MAX_LINE:
                        lines.append(rest)
                        rest = b""
                    partial[fd] = rest
                    for line in lines:
                        self.add(stream, STREAM_LEVELS[stream], line.decode(errors="replace").rstrip("\r"))

    # -- the event loop -------------------------------------------------------------------------------------
    def _take(self) -> tuple[list[LogLine], int]:
        with self._lock:
            lines = list(self._pending)
            self._pending.clear()
            dropped, self._dropped = self._dropped, 0
            self._scheduled = False
        return lines, dropped

    def flush(self) -> None:
        """Send the waiting lines (from the loop): dropped and counted while the supervisor is slow."""
        lines, dropped = self._take()
        transport = self._peer.transport
        if not self._peer.is_open or transport is None:
            self._fallback(lines)
            return
        if transport.get_write_buffer_size() > HIGH_WATER:
            with self._lock:
                self._dropped += dropped + len(lines)
                self._scheduled = True
            self._loop.call_later(RETRY_AFTER, self.flush)  # so the count goes out even if nothing follows
            return
        for start in range(0, max(len(lines), 1 if dropped else 0), FRAME_LINES):
            frame: dict[str, Any] = {"t": "log", "lines": lines[start : start + FRAME_LINES]}
            if dropped and start == 0:
                frame["dropped"] = dropped
            self._peer.send(frame)

    async def close(self) -> None:
        """Send what is left (waiting up to CLOSE_GRACE for the pipes to be read), give fd 1 and 2 back, end the
        reader thread."""
        if self._sink_id is not None:
            with contextlib.suppress(ValueError):
                logger.remove(self._sink_id)
            self._sink_id = None
            if self._level is not None:
                add_sink(sys.stderr, self._level)  # what is logged after this goes to stderr, redacted
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        for _ in range(int(CLOSE_GRACE / DRAIN_STEP)):  # the reader thread empties the pipes meanwhile
            if not any(_unread(fd) for fd in self._readers):
                break
            await asyncio.sleep(DRAIN_STEP)
        for target, saved in self._saved.items():
            os.dup2(saved, target)  # the pipes' last write ends close: the reader thread sees EOF and ends
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, CLOSE_GRACE)
        self.flush()

    # -- helpers --------------------------------------------------------------------------------------------
    def _capture_fds(self) -> None:
        for target, stream in ((1, "stdout"), (2, "stderr")):
            self._saved[target] = os.dup(target)
            read_end, write_end = os.pipe()
            os.dup2(write_end, target)
            os.close(write_end)
            self._readers[read_end] = stream  # type: ignore[assignment]
        # Python's own buffers: a line reaches the pipe when it ends, not when 8 KiB have gathered.
        for text_stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                text_stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        self._thread = threading.Thread(target=self._read_pipes, name="llmling-output", daemon=True)
        self._thread.start()

    def _fallback(self, lines: list[LogLine]) -> None:
        fd = self._saved.get(2, 2)
        for line in lines:
            with contextlib.suppress(OSError):
                os.write(fd, f"{line['level']} {line['text']}\n".encode(errors="replace"))


def _unread(fd: int) -> int:
    """Bytes waiting in the pipe `fd` (0 once it is closed)."""
    try:
        buffer = bytearray(4)
        fcntl.ioctl(fd, termios.FIONREAD, buffer)
        return int.from_bytes(buffer, sys.byteorder)
    except OSError:
        return 0


__all__ = ["FRAME_LINES", "HIGH_WATER", "MAX_LINE", "MAX_PENDING", "AgentOutput", "LogLine"]
