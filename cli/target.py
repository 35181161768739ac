"""Which running system a client command talks to."""

from __future__ import annotations

import os
from pathlib import Path

import click

from llmling.ipc.paths import SOCKET_ENV, is_live, runtime_dir, socket_path


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
