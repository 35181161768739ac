"""A small blocking client for the command line: no asyncio, so `llmling send` starts fast."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Self

from llmling.ipc.frames import DEFAULT_MAX_FRAME, HEADER, FrameDecoder, FrameError, Message, encode


class NotRunning(ConnectionError):
    """No server listens on the socket path."""


class FrameClient:
    """What every blocking client of the control protocol offers (over the socket: `Client`; over NATS:
    `llmling.cli.nats_client.NatsClient`): `send` a request, `receive` the frames answering it, `close`."""

    def send(self, message: Message) -> str:
        raise NotImplementedError

    def receive(self) -> Message:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stream(self, message: Message) -> Iterator[Message]:
        """Send a request and yield every frame that answers it, the final reply last."""
        message_id = self.send(message)
        while True:
            reply = self.receive()
            if reply.get("re") not in (message_id, None):
                continue
            yield reply
            if reply.get("t") != "chunk":
                return

    def request(self, message: Message) -> Message:
        *_, reply = self.stream(message)
        return reply


class Client(FrameClient):
    """One connection to a control socket. Requests are answered in order; chunks come before the reply."""

    def __init__(self, path: Path, timeout: float | None = None) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(os.fspath(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            self._sock.close()
            raise NotRunning(f"no system is running on {path}") from exc
        self._decoder = FrameDecoder(DEFAULT_MAX_FRAME)
        self._queue: list[Message] = []
        self._ids = 0

    def close(self) -> None:
        self._sock.close()

    def send(self, message: Message) -> str:
        self._ids += 1
        message_id = message.setdefault("id", f"c{os.getpid():x}-{self._ids}")
        self._sock.sendall(encode(message))
        return message_id

    def receive(self) -> Message:
        """The next frame; raises ConnectionError when the server closed the connection or sent a bad frame."""
        while not self._queue:
            data = self._sock.recv(1 << 16)
            if not data:
                raise ConnectionError("the server closed the connection")
            try:
                self._queue.extend(self._decoder.feed(data))
            except FrameError as exc:
                raise ConnectionError(f"the server sent an invalid frame: {exc}") from None
        return self._queue.pop(0)


__all__ = ["HEADER", "Client", "FrameClient", "NotRunning"]
