"""`llmling dashboard`: serve the web dashboard of a running system (a client of its control socket).

Imports aiohttp and prometheus-client when it runs; never litellm, pydantic or the supervisor.
"""

from __future__ import annotations

import os
import secrets
import sys

import click

from llmling.dashboard import TOKEN_ENV
from llmling.ipc.paths import SOCKET_ENV
from llmling.observe.scheduling import IDLE_ENV


def new_token() -> str:
    return secrets.token_urlsafe(24)


def parse_address(value: str) -> tuple[str, int]:
    """`[HOST:]PORT` → (host, port); the host defaults to 127.0.0.1. Raises click.BadParameter."""
    host, _, port = value.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise click.BadParameter(f"{value!r}: expected [HOST:]PORT with a port from 0 (any free one) to 65535")
    return host, int(port)


def announce(url: str) -> None:
    """The one line that shows the token: printed once, to stderr."""
    click.echo(f"dashboard: {url}", err=True)


@click.command()
@click.option("--config", "-c", "config", type=click.Path(dir_okay=False), help="the system's config file")
@click.option("--name", "-n", help="system name (default: from --config, or the only system running)")
@click.option("--socket", "socket_", envvar=SOCKET_ENV, help="control socket path")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to bind")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="TCP port")
@click.option("--no-token", is_flag=True, help="no token (refused unless the address is loopback)")
def dashboard(
    config: str | None, name: str | None, socket_: str | None, host: str, port: int, no_token: bool
) -> None:
    """Serve a live web dashboard of a running system: agents, events, traces, triggers, history, /metrics.

    Prints the URL with its token once; every request needs that token (unless --no-token on a loopback
    address). Ctrl+C stops the dashboard, not the system.
    """
    from llmling.cli.target import resolve
    from llmling.cli.watch import target_socket

    path = target_socket(config, name, socket_) or resolve(name, socket_)
    from llmling.dashboard.auth import UnsafeBind, check_bind

    # `up --dashboard` hands its child the token in the environment (never on a command line).
    token = None if no_token else os.environ.pop(TOKEN_ENV, None) or new_token()
    try:
        check_bind(host, token)
    except UnsafeBind as exc:
        raise click.ClickException(str(exc)) from None
    import uvloop

    from llmling.dashboard.app import Dashboard, run

    try:
        idle = bool(os.environ.pop(IDLE_ENV, None))  # a helper of `up --dashboard`: yields the CPU to the system
        uvloop.run(run(Dashboard(str(path), host, port, token), announce, idle))
    except KeyboardInterrupt:
        pass  # Ctrl+C, or SIGTERM (below): the dashboard stops, the system goes on
    except OSError as exc:
        raise click.ClickException(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    sys.exit(0)


__all__ = ["announce", "dashboard", "new_token", "parse_address"]
