"""A listening Unix socket: private directory, 0600 socket, and only peers running as our uid."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from llmling.ipc.frames import DEFAULT_MAX_FRAME
from llmling.ipc.paths import check_length, is_live, prepare_dir
from llmling.ipc.peer import OnMessage, Peer


class AlreadyRunning(RuntimeError):
    """Another live server already listens on the socket path."""


class UnixServer:
    """Owns one listening socket and the peers it accepted.

    `on_connect` is called for each accepted peer whose uid matches ours; others get one error frame and are
    closed before any of their bytes is read. `close()` stops listening, closes every peer and removes the
    socket file (only if it is still ours).
    """

    def __init__(
        self,
        path: Path,
        on_message: OnMessage,
        on_connect: Callable[[Peer], None] | None = None,
        on_close: Callable[[Peer, Exception | None], None] | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> None:
        self.path = path
        self._on_message = on_message
        self._on_connect = on_connect
        self._on_close = on_close
        self._max_frame = max_frame
        self._server: asyncio.AbstractServer | None = None
        self._inode: int | None = None
        # Invariant: holds exactly the accepted peers whose connection is not yet lost.
        self.peers: set[Peer] = set()

    async def start(self) -> None:
        """Bind and listen. Raises AlreadyRunning when a live server holds the path."""
        check_length(self.path)
        prepare_dir(self.path)
        if self.path.exists() or self.path.is_symlink():
            if is_live(self.path):
                raise AlreadyRunning(f"a system is already listening on {self.path}")
            self.path.unlink()
        loop = asyncio.get_running_loop()
        old_umask = os.umask(0o177)  # the socket is born 0600: no window where others may connect
        try:
            self._server = await loop.create_unix_server(self._make_peer, os.fspath(self.path), backlog=256)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        self._inode = self.path.stat().st_ino

    def _make_peer(self) -> Peer:
        return _ServerPeer(self, self._on_message, self._peer_closed, self._max_frame)

    def _accepted(self, peer: Peer) -> bool:
        _, uid, _ = peer.credentials
        if uid != os.getuid():
            peer.send({"t": "error", "error": f"permission denied: peer uid {uid} is not {os.getuid()}"})
            peer.close()
            return False
        self.peers.add(peer)
        if self._on_connect is not None:
            self._on_connect(peer)
        return True

    def _peer_closed(self, peer: Peer, exc: Exception | None) -> None:
        if peer in self.peers:
            self.peers.discard(peer)
            if self._on_close is not None:
                self._on_close(peer, exc)

    def stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        self.stop_listening()
        for peer in list(self.peers):
            peer.close()
        for peer in list(self.peers):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(peer.wait_closed(), 1.0)
        if self._server is not None:
            self._server = None
        self._remove_socket()

    def _remove_socket(self) -> None:
        """Unlink the socket file if it is still ours: same inode, and nobody else listens on it (inode
        numbers are reused right after an unlink, so the inode alone could name another server's socket)."""
        with contextlib.suppress(OSError):
            if self._inode is not None and self.path.stat().st_ino == self._inode and not is_live(self.path):
                self.path.unlink()


class _ServerPeer(Peer):
    __slots__ = ("_server_ref",)

    def __init__(self, server: UnixServer, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self._server_ref = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self._server_ref._accepted(self):
            transport.pause_reading()  # type: ignore[attr-defined]
