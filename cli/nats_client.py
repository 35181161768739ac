"""A blocking client of a system's control requests over NATS (`--nats URL --name SYSTEM`): the same interface
as the socket's `Client`, with asyncio and nats-py running inside on a private loop.

Imported only when `--nats` (or $LLMLING_NATS_URL) is given: the light commands never load asyncio or nats.
Every request is published to `<stream>.<system>.control` with this client's reply inbox; the frames
answering it come back there, in order. While it waits, the client answers the supervisor's liveness probes
(an empty message with a reply subject) and, every `KEEPALIVE` s without a frame, pings the system: one that
is gone ends the wait with ConnectionError, as a closed socket does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from llmling.ipc.client import FrameClient, NotRunning
from llmling.ipc.frames import FrameError, Message, decode, encode_body
from llmling.ipc.nats_connect import NatsConnectError, NatsOptions, connect, describe
from llmling.ipc.nats_subjects import Subjects

if TYPE_CHECKING:
    from nats.aio.client import Client as Nats

# Environment variables of the secrets (never command-line arguments: `ps` shows those).
PASSWORD_ENV = "NATS_PASSWORD"
TOKEN_ENV = "NATS_TOKEN"
# Seconds without a frame after which the client pings the system, and how long the ping may take.
KEEPALIVE = 10.0
PING_TIMEOUT = 30.0

T = TypeVar("T")


class NatsUsageError(ValueError):
    """The NATS flags do not make sense together (one line naming the flag)."""


class NatsRefused(ConnectionError):
    """The NATS server refused an operation of ours (e.g. a publish to the control subject we may not use)."""


@dataclass(frozen=True, slots=True)
class NatsTarget:
    """Where a remote system is: the NATS server, the stream and the system's name."""

    options: NatsOptions
    stream: str
    system: str

    @property
    def control(self) -> str:
        return Subjects(self.stream, self.system).control


def target_from_flags(
    url: str,
    system: str | None,
    stream: str,
    creds: str | None = None,
    nkey: str | None = None,
    user: str | None = None,
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
) -> NatsTarget:
    """The target of the `--nats*` flags; the password comes from $NATS_PASSWORD, a token from $NATS_TOKEN.
    Raises NatsUsageError naming the flag that is missing."""
    if not system:
        raise NatsUsageError("--nats needs --name SYSTEM (the name of the system to reach)")
    if user and not os.environ.get(PASSWORD_ENV):
        raise NatsUsageError(f"--nats-user needs the password in ${PASSWORD_ENV}")
    if key and not cert:
        raise NatsUsageError("--nats-key needs --nats-cert")
    options = NatsOptions(
        url=url,
        creds_file=creds,
        nkey_seed_file=nkey,
        user=user,
        password=os.environ.get(PASSWORD_ENV) if user else None,
        token=os.environ.get(TOKEN_ENV) or None,
        tls_ca_file=ca,
        tls_cert_file=cert,
        tls_key_file=key,
        name=f"llmling-cli {system}",
    )
    return NatsTarget(options, stream, system)


class NatsClient(FrameClient):
    """One connection to a NATS server, talking to one system. Raises NatsConnectError (one line naming the
    URL) when the server cannot be reached or refuses us, NotRunning when no system answers on its subject.
    `timeout` bounds each wait for a frame (None: wait as long as the system lives)."""

    def __init__(self, target: NatsTarget, timeout: float | None = None) -> None:
        self.target = target
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        # Completed with the server's refusal (a permissions violation): every wait ends with it.
        self._refused: asyncio.Future[str] = self._loop.create_future()
        self._ids = 0
        # Frames this client answers itself (a request too large to publish), before any from the system.
        self._local: list[Message] = []
        try:
            connecting = connect(target.options, reconnect=False, on_error=self._on_error)
            self._nats: Nats = self._run(connecting)
            self._inbox = self._nats.new_inbox()
            self._subscription = self._run(self._nats.subscribe(self._inbox))
            self._run(self._ping())
        except BaseException:
            self.close()
            raise

    async def _on_error(self, exc: Exception) -> None:
        if not self._refused.done():
            self._refused.set_result(f"NATS at {self.target.options.url} refused: {describe(exc)}")

    async def _unless_refused(self, waiting: Awaitable[T]) -> T:
        """`waiting`'s result, or NatsRefused as soon as the server reports a refusal."""
        task = asyncio.ensure_future(waiting)
        try:
            await asyncio.wait({task, self._refused}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                return task.result()
            raise NatsRefused(self._refused.result())
        finally:  # also when this wait is cancelled (Ctrl+C): nothing is left pending on the loop
            if not task.done():
                task.cancel()
                await asyncio.wait({task})

    def _run(self, work: Awaitable[T]) -> T:
        """Run `work` on the private loop; on Ctrl+C (or any error) it is cancelled and finished first, so the
        loop holds nothing half-done."""
        task = asyncio.ensure_future(work, loop=self._loop)
        try:
            return self._loop.run_until_complete(task)
        except BaseException:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    self._loop.run_until_complete(task)
            raise

    def close(self) -> None:
        if self._loop.is_closed():
            return
        nats = getattr(self, "_nats", None)
        with contextlib.suppress(Exception, KeyboardInterrupt):
            if nats is not None:
                self._run(asyncio.wait_for(nats.close(), 5.0))
        self._loop.close()

    def send(self, message: Message) -> str:
        self._ids += 1
        message_id: str = message.setdefault("id", f"n{os.getpid():x}-{self._ids}")
        body = encode_body(message)
        if len(body) > self._nats.max_payload:
            error = f"request too large: {len(body)} bytes, the NATS server takes {self._nats.max_payload}"
            self._local.append({"t": "error", "re": message_id, "error": error})
            return message_id
        self._run(self._nats.publish(self.target.control, body, reply=self._inbox))
        return message_id

    def receive(self) -> Message:
        """The next frame; ConnectionError when the system stopped (or NATS was lost), TimeoutError after
        `timeout` s without one."""
        if self._local:
            return self._local.pop(0)
        return self._run(self._next())

    async def _next(self) -> Message:
        from nats.errors import ConnectionClosedError
        from nats.errors import TimeoutError as NatsTimeout

        loop = asyncio.get_running_loop()
        deadline = None if self.timeout is None else loop.time() + self.timeout
        while True:
            wait = KEEPALIVE if deadline is None else min(KEEPALIVE, deadline - loop.time())
            if wait <= 0:
                raise TimeoutError(f"no answer from system {self.target.system!r} within {self.timeout:g} s")
            try:
                msg = await self._unless_refused(self._subscription.next_msg(timeout=wait))
            except NatsTimeout:
                await self._ping()
                continue
            except ConnectionClosedError:
                raise ConnectionError(f"lost the connection to NATS at {self.target.options.url}") from None
            if msg.headers and msg.headers.get("Status") == "503":
                raise ConnectionError("the system stopped")  # nobody serves its control subject any more
            if msg.reply:  # the supervisor's liveness probe
                await msg.respond(b"")
                continue
            try:
                frame = decode(msg.data)
            except FrameError as exc:
                raise ConnectionError(f"the system sent an invalid frame: {exc}") from None
            if frame.get("t") == "stopped":
                raise ConnectionError("the system stopped")
            return frame

    async def _ping(self) -> None:
        """Raises NotRunning when no system serves the control subject, ConnectionError when it does not
        answer in time."""
        from nats.errors import ConnectionClosedError, NoRespondersError
        from nats.errors import TimeoutError as NatsTimeout

        self._ids += 1
        ping = encode_body({"t": "ping", "id": f"n{os.getpid():x}-{self._ids}"})
        try:
            await self._unless_refused(self._nats.request(self.target.control, ping, timeout=PING_TIMEOUT))
        except NoRespondersError:
            raise NotRunning(
                f"no system {self.target.system!r} answers at {self.target.options.url} "
                f"(subject {self.target.control})"
            ) from None
        except NatsTimeout:
            raise ConnectionError(f"system {self.target.system!r} does not answer its pings") from None
        except ConnectionClosedError:
            raise ConnectionError(f"lost the connection to NATS at {self.target.options.url}") from None


__all__ = ["NatsClient", "NatsConnectError", "NatsRefused", "NatsTarget", "NatsUsageError", "target_from_flags"]
