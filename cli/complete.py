"""Shell completion of agent names from the running system (`eval "$(_LLMLING_COMPLETE=bash_source llmling)"`).

The completer asks the system chosen by the command's `--name`/`--socket` (or the only one running) for its
status, within a short timeout; when no system answers it completes nothing rather than failing the shell.
"""

from __future__ import annotations

from typing import Any

import click
from click.shell_completion import CompletionItem

from llmling.cli.target import resolve
from llmling.ipc.client import Client

# Seconds a completion may wait for the system: a shell must never hang on <Tab>.
COMPLETION_TIMEOUT = 1.0


def agent_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """The running system's agent names that start with `incomplete`."""
    try:
        path = resolve(ctx.params.get("name"), ctx.params.get("socket_"))
        with Client(path, COMPLETION_TIMEOUT) as client:
            reply: dict[str, Any] = client.request({"t": "status"})
    except (click.ClickException, OSError):
        return []
    names = [str(agent.get("name")) for agent in reply.get("agents", []) if isinstance(agent, dict)]
    return [CompletionItem(name) for name in names if name.startswith(incomplete)]


__all__ = ["COMPLETION_TIMEOUT", "agent_names"]
