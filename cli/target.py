"""Which running system a client command talks to, and how it talks: options, connection, one request."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from llmling.ipc.client import Client, FrameClient, NotRunning
from llmling.ipc.paths import SOCKET_ENV, is_live, runtime_dir, socket_path

Message = dict[str, Any]
NATS_URL_ENV = "LLMLING_NATS_URL"
# Where the `--nats*` flags of the current command are kept (ctx.meta): commands do not take them as parameters.
_NATS_FLAGS = "llmling.nats"
# (flag, key, environment variable, metavar, help) of every `--nats*` flag.
NATS_FLAGS = (
    ("--nats", "url", NATS_URL_ENV, "URL", "reach the system over this NATS server (with --name), from any host"),
    ("--nats-stream", "stream", "LLMLING_NATS_STREAM", "NAME", "the system's `transport.nats.stream` [llmling]"),
    ("--nats-creds", "creds", None, "FILE", "NATS credentials file (JWT + nkey seed)"),
    ("--nats-nkey", "nkey", None, "FILE", "file holding an nkey seed"),
    ("--nats-user", "user", None, "USER", "NATS user; the password is read from $NATS_PASSWORD"),
    ("--nats-ca", "ca", None, "FILE", "CA bundle that signed the NATS server's certificate (TLS)"),
    ("--nats-cert", "cert", None, "FILE", "client certificate (mutual TLS)"),
    ("--nats-key", "key", None, "FILE", "the client certificate's private key"),
)


def resolve(name: str | None, override: str | None) -> Path:
    """--socket (or $LLMLING_SOCKET), then --name, then the only system running in the runtime directory."""
    if override or name or os.environ.get(SOCKET_ENV):
        return socket_path(name or "", override)
    directory = runtime_dir()
    live = sorted(p for p in directory.glob("*.sock") if is_live(p)) if directory.is_dir() else []
    if len(live) == 1:
        return live[0]
    if not live:
        raise click.ClickException(f"no system is running (no live socket in {directory})")
    names = ", ".join(p.stem for p in live)
    raise click.ClickException(f"several systems are running ({names}); choose one with --name")


def _remember_nats_flag(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    ctx.meta.setdefault(_NATS_FLAGS, {})[param.name] = value


def with_nats(function: Any) -> Any:
    """The `--nats*` options (kept in the command's context; a $NATS_TOKEN is sent when set)."""
    for flag, key, envvar, metavar, text in reversed(NATS_FLAGS):
        option = click.option(
            flag, key, envvar=envvar, metavar=metavar, help=text, expose_value=False, callback=_remember_nats_flag
        )
        function = option(function)
    return function


def with_system(function: Any) -> Any:
    """The `--name`/`--socket` options of every client command, and the `--nats*` ones."""
    function = with_nats(function)
    function = click.option("--socket", "socket_", envvar=SOCKET_ENV, help="control socket path")(function)
    return click.option("--name", "-n", help="system name (default: the only system running)")(function)


def nats_flags() -> dict[str, Any] | None:
    """The `--nats*` flags of the running command when `--nats` (or $LLMLING_NATS_URL) is given, else None."""
    ctx = click.get_current_context(silent=True)
    flags = ctx.meta.get(_NATS_FLAGS) if ctx is not None else None
    return flags if flags and flags.get("url") else None


def connect_nats(name: str | None, flags: dict[str, Any], timeout: float | None = None) -> FrameClient:
    """A client of system `name` over NATS (imports asyncio and nats only now)."""
    from llmling.cli import nats_client as remote

    try:
        target = remote.target_from_flags(system=name, **{**flags, "stream": flags.get("stream") or "llmling"})
        return remote.NatsClient(target, timeout)
    except (remote.NatsUsageError, remote.NatsConnectError, remote.NatsRefused, NotRunning) as exc:
        raise click.ClickException(str(exc)) from None
    except ConnectionError as exc:
        raise click.ClickException(f"lost the system: {exc}") from None


def connect(name: str | None, socket_: str | None, timeout: float | None = None) -> FrameClient:
    """A client of the system: over NATS with `--nats`, else over its control socket."""
    flags = nats_flags()
    if flags is not None:
        return connect_nats(name, flags, timeout)
    path = resolve(name, socket_)
    try:
        return Client(path, timeout)
    except NotRunning as exc:
        raise click.ClickException(str(exc)) from None
    except PermissionError:
        raise click.ClickException(f"permission denied on {path}") from None


def fail_on_error(reply: Message) -> Message:
    if reply.get("t") == "error":
        raise click.ClickException(str(reply.get("error")))
    return reply


def request(name: str | None, socket_: str | None, message: Message, timeout: float | None = 30.0) -> Message:
    """One request to the system; its final reply. An `error` reply or a lost connection is a ClickException."""
    with connect(name, socket_, timeout) as client:
        try:
            return fail_on_error(client.request(message))
        except ConnectionError as exc:
            raise click.ClickException(f"lost the system: {exc}") from None
