"""Which running system a client command talks to, and how it talks: options, connection, one request."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from llmling.ipc.client import Client, NotRunning
from llmling.ipc.paths import SOCKET_ENV, is_live, runtime_dir, socket_path

Message = dict[str, Any]


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


def with_system(function: Any) -> Any:
    """The `--name`/`--socket` options of every client command."""
    function = click.option("--socket", "socket_", envvar=SOCKET_ENV, help="control socket path")(function)
    return click.option("--name", "-n", help="system name (default: the only system running)")(function)


def connect(name: str | None, socket_: str | None, timeout: float | None = None) -> Client:
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
