"""Connecting to NATS: the options (URL, credentials, TLS), the connection, and one-line errors.

Only the NATS transport imports this (and with it `nats`): the Unix-socket path never does. Credentials are
values here (a password, a token), read by the caller from the environment variables the config names; they
never reach a log line (nats-py's own error callback, which logs tracebacks, is replaced by one that logs a
single line).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

if TYPE_CHECKING:
    from nats.aio.client import Client

    from llmling.config.transport import NatsConfig

# Seconds between reconnect attempts (nats-py adds its own jitter); a client that reconnects does so forever.
RECONNECT_WAIT = 1.0
# Bytes nats-py buffers while disconnected (publishes beyond it fail at once instead of growing memory).
PENDING_BYTES = 8 * 1024 * 1024
# The largest message we publish (a run frame holds a prompt of at most 1 MiB; NATS' default max_payload).
MAX_PAYLOAD = 1024 * 1024


class NatsConnectError(Exception):
    """The NATS server could not be reached, or refused us; the message is one line, naming the URL."""


@dataclass(frozen=True, slots=True)
class NatsOptions:
    """How to reach one NATS deployment. `password`/`token` are values (never logged, never in `repr`)."""

    url: str
    creds_file: str | None = None
    nkey_seed_file: str | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    connect_timeout: float = 5.0
    # The client's name as the server shows it (e.g. "llmling-host myhost").
    name: str = "llmling"

    def __repr__(self) -> str:
        return f"NatsOptions(url={self.url!r}, name={self.name!r})"

    @property
    def servers(self) -> list[str]:
        return [url.strip() for url in self.url.split(",") if url.strip()]

    def tls_context(self) -> ssl.SSLContext | None:
        if not (self.tls_ca_file or self.tls_cert_file or any(u.startswith("tls://") for u in self.servers)):
            return None
        context = ssl.create_default_context(cafile=self.tls_ca_file)
        if self.tls_cert_file:
            context.load_cert_chain(self.tls_cert_file, self.tls_key_file)
        return context


OnEvent = Callable[[], Awaitable[None]]


async def connect(
    options: NatsOptions,
    reconnect: bool = True,
    on_disconnect: OnEvent | None = None,
    on_reconnect: OnEvent | None = None,
    on_error: Callable[[Exception], Awaitable[None]] | None = None,
) -> Client:
    """Connect (raises NatsConnectError naming the URL after `connect_timeout` + 1 s at most); with `reconnect`,
    later losses of the server are retried forever every ~RECONNECT_WAIT s, with `on_disconnect`/
    `on_reconnect` called meanwhile; without it, a lost connection stays closed. Errors the server reports
    once connected (e.g. a permissions violation) are logged as one line, or given to `on_error`."""
    from nats.aio.client import Client
    from nats.errors import Error as NatsError
    from nats.errors import NoServersError

    log = logger.bind(agent=options.name)
    # The last error of the first connect (nats-py retries inside `connect`; we bound it by time).
    last: list[BaseException] = []
    connected = False

    async def error_cb(exc: Exception) -> None:
        if connected and on_error is not None:
            await on_error(exc)
        elif connected:
            log.warning("NATS: {}", describe(exc))
        elif not last or not _refused(last[0]):
            # A refusal says why; the connection reset that may follow it must not hide that.
            last[:] = [exc]

    async def noop() -> None:
        return None

    try:
        tls = options.tls_context()
    except (OSError, ssl.SSLError) as exc:
        files = ", ".join(f for f in (options.tls_ca_file, options.tls_cert_file, options.tls_key_file) if f)
        raise NatsConnectError(f"NATS TLS files ({files}): {getattr(exc, 'strerror', None) or exc}") from None
    client = Client()
    try:
        # nats-py keeps trying a refused server inside `connect`; the deadline ends the first attempt.
        async with asyncio.timeout(options.connect_timeout + 1.0):
            await client.connect(
                servers=options.servers,
                name=options.name,
                error_cb=error_cb,
                disconnected_cb=on_disconnect or noop,
                reconnected_cb=on_reconnect or noop,
                allow_reconnect=True,
                max_reconnect_attempts=-1 if reconnect else 1,
                reconnect_time_wait=RECONNECT_WAIT,
                connect_timeout=options.connect_timeout,
                pending_size=PENDING_BYTES,
                tls=tls,
                user=options.user,
                password=options.password,
                token=options.token,
                user_credentials=options.creds_file,
                nkeys_seed=options.nkey_seed_file,
            )
    except (NatsError, NoServersError, OSError, TimeoutError, ssl.SSLError) as exc:
        with contextlib.suppress(Exception):
            await client.close()
        cause = last[0] if last else exc
        raise NatsConnectError(f"cannot connect to NATS at {options.url}: {describe(cause)}") from None
    if not reconnect:
        client.options["allow_reconnect"] = False
    connected = True
    return client


def _refused(exc: BaseException) -> bool:
    return "authorization violation" in str(exc).lower()


class _QuietTlsClose(logging.Filter):
    """Drops asyncio's warning about a TLS connection the server closed (nats-py's protocol asks to keep it
    half-open, which TLS cannot): one per closed TLS connection, and nothing is wrong."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received() has no effect when using ssl" not in record.getMessage()


logging.getLogger("asyncio").addFilter(_QuietTlsClose())


def describe(exc: BaseException) -> str:
    """One line for a NATS error (nats-py's text without its prefix and quotes; known causes in words)."""
    # nats-py quotes the server's text in single quotes; a double quote belongs to it (a quoted subject).
    text = str(exc).strip().removeprefix("nats: ").strip("'") or type(exc).__name__
    if _refused(exc):
        return (
            "authorization violation (the server wants credentials: creds_file, nkey_seed_file, "
            "user + password, or a token)"
        )
    if "no servers available" in text.lower() or isinstance(exc, TimeoutError):
        return "no server answered"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return text.splitlines()[0]


def options_from_config(config: NatsConfig, base_dir: Path, name: str) -> NatsOptions:
    """The one place a `transport.nats` config becomes `NatsOptions`: the password/token are read from the
    environment variables the config names (a missing one: NatsConnectError naming it), file paths are taken
    relative to the config's folder (`base_dir`). `name` is the client's name as the server shows it."""

    def secret(field: str, variable: str | None) -> str | None:
        if variable is None:
            return None
        value = os.environ.get(variable)
        if value is None:
            raise NatsConnectError(f"transport.nats.{field}: environment variable {variable} is not set")
        return value

    def path(value: str | None) -> str | None:
        return None if value is None else str(base_dir / Path(value).expanduser())

    tls = config.tls
    return NatsOptions(
        url=config.url,
        creds_file=path(config.creds_file),
        nkey_seed_file=path(config.nkey_seed_file),
        user=config.user,
        password=secret("password_env", config.password_env),
        token=secret("token_env", config.token_env),
        tls_ca_file=path(tls.ca_file if tls else None),
        tls_cert_file=path(tls.cert_file if tls else None),
        tls_key_file=path(tls.key_file if tls else None),
        connect_timeout=config.connect_timeout,
        name=name,
    )


async def close_quietly(client: Client, timeout: float = 2.0) -> None:
    """Send what is buffered (bounded by `timeout`), then close. No drain of subscriptions: callers close after
    their own work stopped, and nats-py's drain leaves a gathered future unretrieved when it is cut short."""
    with contextlib.suppress(Exception):
        if client.is_connected:
            await client.flush(timeout=timeout)
    with contextlib.suppress(Exception):
        await client.close()
