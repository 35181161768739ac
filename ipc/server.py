"""A listening Unix socket: private directory, 0600 socket, only peers running as our uid, and bounded clients.

Limits (see docs/ARCHITECTURE.md, "Limits at the boundaries"):
- accepting stops while the process's descriptor budget is used up (`fdbudget`), and resumes when it frees up;
  meanwhile the oldest connections that have not sent a complete frame for `EVICT_AFTER` s are closed to make
  room, so that a flood of idle connections cannot keep an agent (re)connecting, or a CLI client, out until their
  idle timeouts end;
- at most `max_clients` connections that are not trusted, counted from their first frame (a connection whose
  first frame comes when the cap is reached stays only if the owner exempts that frame, e.g. an agent's `hello`;
  otherwise it gets one `error` frame and is closed);
- a connection must complete a frame within `idle_timeout` seconds of starting it (the first one: of connecting);
- a client's unsent replies above the transport's high-water mark pause reading from it; above
  `max_write_buffer` bytes it is dropped.
Trusted peers (`trust()`, e.g. authenticated agents) are exempt from all three.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path

from loguru import logger

from llmling.ipc.fdbudget import fd_budget, nofile_limit
from llmling.ipc.frames import DEFAULT_MAX_FRAME, Message, encode
from llmling.ipc.paths import check_length, is_live, prepare_dir
from llmling.ipc.peer import OnMessage, Peer

# Defaults of the client limits.
MAX_CLIENTS = 128
IDLE_TIMEOUT = 10.0
MAX_WRITE_BUFFER = 2 * DEFAULT_MAX_FRAME
# Connections accepted per wake-up of the listening socket (the budget is looked at once per wake-up).
ACCEPT_BATCH = 64
# Seconds between looks at the descriptor budget while accepting is paused.
BUDGET_RECHECK = 0.25
# Out of descriptors: connections without a complete frame for this long may be closed to make room, this many
# per look, the next look after EVICT_RECHECK s (their descriptors are released by then).
EVICT_AFTER = 1.0
EVICT_BATCH = 8
EVICT_RECHECK = 0.05

_log = logger.bind(agent="ipc")


class ListenError(RuntimeError):
    """The socket cannot be served: another server holds it, or its directory is not safe to use."""


class AlreadyRunning(ListenError):
    """Another live server already listens on the socket path."""


class UnixServer:
    """Owns one listening socket and the peers it accepted.

    `on_connect` is called for each accepted peer whose uid matches ours; others get one error frame and are
    closed before any of their bytes is read. `exempt(message)` says whether a connection over the client cap
    may stay, from its first frame. `close()` stops listening, closes every peer and removes the socket file (only
    if it is still ours).
    """

    def __init__(
        self,
        path: Path,
        on_message: OnMessage,
        on_connect: Callable[[Peer], None] | None = None,
        on_close: Callable[[Peer, Exception | None], None] | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
        *,
        exempt: Callable[[Message], bool] | None = None,
        max_clients: int = MAX_CLIENTS,
        idle_timeout: float = IDLE_TIMEOUT,
        max_write_buffer: int = MAX_WRITE_BUFFER,
    ) -> None:
        self.path = path
        self._on_message = on_message
        self._on_connect = on_connect
        self._on_close = on_close
        self._max_frame = max_frame
        self._exempt = exempt
        self.max_clients = max_clients
        self.idle_timeout = idle_timeout
        self.max_write_buffer = max_write_buffer
        self._sock: socket.socket | None = None
        self._inode: int | None = None
        self._recheck: asyncio.TimerHandle | None = None
        # Invariant: True while the listening socket is registered with the loop for accepting.
        self._accepting = False
        # Invariant: the tasks wrapping accepted sockets into transports that have not finished.
        self._wrapping: set[asyncio.Task[object]] = set()
        # Invariant: holds exactly the accepted peers whose connection is not yet lost.
        self.peers: set[Peer] = set()
        # Invariant: the peers of `peers` that are trusted (exempt from the client limits).
        self.trusted: set[Peer] = set()
        # Invariant: the peers of `peers` that have not sent a complete frame, oldest first.
        self._unclassified: dict[_ServerPeer, None] = {}
        # Invariant: True from the moment the descriptor budget ran out until accepting resumed with room.
        self._short_of_fds = False
        # Counters for status and tests: connections refused for each reason since start.
        self.refused = {"over_cap": 0, "idle": 0, "write_buffer": 0, "evicted": 0}
        self.paused_for_fds = 0

    @property
    def clients(self) -> int:
        """Connections counted against the cap: not trusted, and past their first frame (the ones that have not
        sent one are bounded by the idle timeout and, when descriptors run short, evicted)."""
        return len(self.peers) - len(self.trusted) - len(self._unclassified)

    async def start(self) -> None:
        """Bind and listen. Raises AlreadyRunning when a live server holds the path, ListenError when its directory
        is unsafe or unusable (the message names the path, its owner and mode)."""
        check_length(self.path)
        try:
            prepare_dir(self.path)
        except PermissionError as exc:
            raise ListenError(str(exc)) from None
        except OSError as exc:
            raise ListenError(f"cannot create the socket's directory {self.path.parent}: {exc.strerror}") from None
        if self.path.exists() or self.path.is_symlink():
            if is_live(self.path):
                raise AlreadyRunning(f"a system is already listening on {self.path}")
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket is born 0600: no window where others may connect
        try:
            sock.bind(os.fspath(self.path))
        except OSError as exc:
            sock.close()
            raise ListenError(f"cannot bind {self.path}: {exc.strerror}") from None
        finally:
            os.umask(old_umask)
        sock.listen(256)
        sock.setblocking(False)
        self._sock = sock
        os.chmod(self.path, 0o600)
        self._inode = self.path.stat().st_ino
        self._listen()

    # -- accepting --------------------------------------------------------------------------------------------
    def _listen(self) -> None:
        if self._sock is not None and not self._accepting:
            asyncio.get_running_loop().add_reader(self._sock.fileno(), self._accept_some)
            self._accepting = True

    def _pause(self, delay: float) -> None:
        """Stop accepting for `delay` s; pending connections wait in the kernel's backlog."""
        loop = asyncio.get_running_loop()
        if self._accepting and self._sock is not None:
            loop.remove_reader(self._sock.fileno())
            self._accepting = False
        if self._recheck is None:
            self._recheck = loop.call_later(delay, self._resume_if_possible)

    def _short(self, why: str) -> None:
        """Out of descriptors: close a few connections that never sent a frame, pause, look again."""
        if not self._short_of_fds:
            self._short_of_fds = True
            self.paused_for_fds += 1
            _log.warning("{}: not accepting connections for now: {}", self.path.name, why)
        evicted = self._evict_idle()
        self._pause(EVICT_RECHECK if evicted else BUDGET_RECHECK)

    def _evict_idle(self) -> int:
        deadline = asyncio.get_running_loop().time() - EVICT_AFTER
        evicted = 0
        for peer in list(self._unclassified):
            if evicted == EVICT_BATCH or peer.connected_at > deadline:
                break
            self._unclassified.pop(peer, None)
            self.refused["evicted"] += 1
            peer.send({"t": "error", "error": "server busy: too many connections"})
            peer.abort()
            evicted += 1
        return evicted

    def _resume_if_possible(self) -> None:
        self._recheck = None
        if self._sock is None or self._accepting:
            return
        self._listen()
        self._accept_some()

    def _accept_some(self) -> None:
        if self._sock is None:
            return
        budget = fd_budget()
        headroom = budget.headroom()
        if headroom <= 0:
            self._short(f"descriptor budget used up (limit {nofile_limit()}, reserve {budget.reserve})")
            return
        if self._short_of_fds:
            self._short_of_fds = False
            _log.info("{}: accepting connections again", self.path.name)
        for _ in range(min(ACCEPT_BATCH, headroom)):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE/ENFILE/ENOBUFS: out of something; look again shortly
                self._short(exc.strerror or str(exc))
                return
            self._admit(conn)

    def _admit(self, conn: socket.socket) -> None:
        raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", raw)
        if uid != os.getuid():
            # Refused before any of its bytes is read: one error frame (fits the empty socket buffer), then close.
            with contextlib.suppress(OSError):
                conn.send(
                    encode({"t": "error", "error": f"permission denied: peer uid {uid} is not {os.getuid()}"})
                )
            conn.close()
            return
        conn.setblocking(False)
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.connect_accepted_socket(self._make_peer, conn))
        self._wrapping.add(task)
        task.add_done_callback(lambda done: self._wrapped(done, conn))

    def _wrapped(self, task: asyncio.Task[object], conn: socket.socket) -> None:
        self._wrapping.discard(task)
        if task.cancelled() or task.exception() is not None:
            conn.close()

    def _make_peer(self) -> Peer:
        return _ServerPeer(self, self._on_message, self._peer_closed, self._max_frame)

    def _accepted(self, peer: _ServerPeer) -> None:
        self.peers.add(peer)
        self._unclassified[peer] = None
        if self._on_connect is not None:
            self._on_connect(peer)

    def _peer_closed(self, peer: Peer, exc: Exception | None) -> None:
        self._unclassified.pop(peer, None)  # type: ignore[call-overload]
        if peer in self.peers:
            self.peers.discard(peer)
            self.trusted.discard(peer)
            if self._on_close is not None:
                self._on_close(peer, exc)

    def trust(self, peer: Peer) -> None:
        """Exempt `peer` from the client limits (cap, idle timeout, write buffer): the owner vouches for it."""
        if peer in self.peers and isinstance(peer, _ServerPeer):
            self.trusted.add(peer)
            peer.trust()

    def classified(self, peer: _ServerPeer, first: Message) -> bool:
        """`peer` sent its first complete frame, `first`: whether it may stay (it may, unless the cap is reached
        and the owner does not exempt that frame)."""
        over_cap = self.clients >= self.max_clients
        self._unclassified.pop(peer, None)
        return not over_cap or (self._exempt is not None and self._exempt(first))

    # -- stopping ---------------------------------------------------------------------------------------------
    def stop_listening(self) -> None:
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None
        if self._sock is not None:
            if self._accepting:
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
                self._accepting = False
            self._sock.close()
            self._sock = None

    async def close(self) -> None:
        self.stop_listening()
        for task in list(self._wrapping):
            task.cancel()
        for peer in list(self.peers):
            peer.close()
        for peer in list(self.peers):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(peer.wait_closed(), 1.0)
        for peer in list(self.peers):
            peer.abort()
        self._remove_socket()

    def _remove_socket(self) -> None:
        """Unlink the socket file if it is still ours: same inode, and nobody else listens on it (inode
        numbers are reused right after an unlink, so the inode alone could name another server's socket)."""
        with contextlib.suppress(OSError):
            if self._inode is not None and self.path.stat().st_ino == self._inode and not is_live(self.path):
                self.path.unlink()


class _ServerPeer(Peer):
    """A peer of the server, subject to the client limits until the owner trusts it."""

    __slots__ = ("_deadline", "_trusted", "_unclassified", "connected_at", "server")

    def __init__(self, server: UnixServer, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.server = server
        self.connected_at = asyncio.get_running_loop().time()
        # Invariant: True until the first complete frame was read.
        self._unclassified = True
        self._trusted = False
        # Invariant: set while a frame (or, before the first one, the connection) waits for its end.
        self._deadline: asyncio.TimerHandle | None = None

    def trust(self) -> None:
        self._trusted = True
        self._stop_deadline()
        if self.transport is not None:
            self.transport.resume_reading()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.server._accepted(self)
        self._start_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._trusted or not self.is_open:
            return
        if self._decoder.buffered:
            self._start_deadline()  # a frame has begun: it must end in time (a new one only once this one ends)
        elif not self._unclassified:
            self._stop_deadline()

    def admit(self, message: Message) -> bool:
        if not self._unclassified:
            return True
        self._unclassified = False
        if not self.server.classified(self, message):
            self.server.refused["over_cap"] += 1
            self.close_with_error(f"too many connections: the limit is {self.server.max_clients} clients")
            return False
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        super().connection_lost(exc)

    # -- the idle deadline ------------------------------------------------------------------------------------
    def _start_deadline(self) -> None:
        if self._deadline is None and not self._trusted:
            loop = asyncio.get_running_loop()
            self._deadline = loop.call_later(self.server.idle_timeout, self._timed_out)

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self._trusted or not self.is_open:
            return
        self.server.refused["idle"] += 1
        self.close_with_error(f"idle timeout: no complete frame within {self.server.idle_timeout:g} s")

    # -- the write buffer -------------------------------------------------------------------------------------
    def pause_writing(self) -> None:
        super().pause_writing()
        if not self._trusted and self.transport is not None:
            self.transport.pause_reading()  # no new requests while it does not read the replies it has

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def send(self, message: Message) -> None:
        super().send(message)
        transport = self.transport
        if self._trusted or transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > self.server.max_write_buffer:
            self.server.refused["write_buffer"] += 1
            _log.warning(
                "dropping a client that does not read its replies ({} bytes unsent, limit {})",
                transport.get_write_buffer_size(),
                self.server.max_write_buffer,
            )
            self.abort()
