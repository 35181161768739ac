"""`llmling logs [AGENT] [-f] [-n N] [--json]`: the agents' log lines and stdout/stderr, kept by the supervisor.

A light client of the control socket (click and the IPC client only): works while `up` runs in another terminal
or under systemd. `-f` follows until Ctrl+C or the system stops. When no system runs it reads the log files of
the state folder (`cli/offline.py`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import click

from llmling.cli.complete import agent_names
from llmling.cli.target import connect, with_nats
from llmling.ipc.paths import SOCKET_ENV

Message = dict[str, Any]


# The keys of a `--json` line (and "replica", the process's number, for an agent with several).
JSON_KEYS = ("agent", "ts", "stream", "level", "text")


def line_text(entry: Message) -> str:
    """`12:00:01.234 analyzer         INFO    text` (stdout/stderr lines show the stream instead of a level;
    a replica's lines name it: `analyzer#2`); the further lines of a multi-line text are indented."""
    ts = float(entry.get("ts") or 0.0)
    stamp = time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts % 1 * 1000):03d}"
    label = entry.get("level") if entry.get("stream") == "log" else entry.get("stream")
    first, *rest = str(entry.get("text", "")).split("\n")
    who = f"{entry.get('agent', '')}" + (f"#{entry['replica']}" if entry.get("replica") is not None else "")
    head = f"{stamp} {who:<16} {label!s:<7} {first}"
    return "\n".join([head, *(f"{'':>38}{line}" for line in rest)])


def _print(text: str) -> None:
    try:
        click.echo(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `llmling logs -f | head`: stop quietly
        os._exit(0)


def _show(entry: Message, as_json: bool) -> None:
    if as_json:
        keys = ("agent", "replica", "ts", "stream", "level", "text") if "replica" in entry else JSON_KEYS
        _print(json.dumps({key: entry.get(key) for key in keys}))
    else:
        _print(line_text(entry))


@click.command()
@click.argument("agent", required=False, shell_complete=agent_names)
@click.option("--follow", "-f", is_flag=True, help="keep printing new lines until Ctrl+C")
@click.option("--lines", "-n", "count", default=50, show_default=True, help="the last N lines first (0: none)")
@click.option("--json", "as_json", is_flag=True, help='one {"agent","ts","stream","level","text"} a line')
@click.option("--name", help="system name (default: the only system running)")
@click.option("--socket", "socket_", envvar=SOCKET_ENV, help="control socket path")
@click.option("--config", "-c", type=click.Path(dir_okay=False), help="read this config's log files directly")
@click.option("--state-dir", type=click.Path(file_okay=False), help="read the log files in this folder directly")
@with_nats
def logs(
    agent: str | None,
    follow: bool,
    count: int,
    as_json: bool,
    name: str | None,
    socket_: str | None,
    config: str | None,
    state_dir: str | None,
) -> None:
    """Show the agents' log lines and what they printed (of AGENT, or of all, merged by time).

    Asks the running system; with --config or --state-dir, or when no system runs, reads the log files."""
    from llmling.cli.offline import LOGS, find_state_file, read_logs, system_running

    if config or state_dir or not system_running(name, socket_):
        if follow:
            raise click.ClickException("no system is running: --follow needs one")
        for entry in read_logs(find_state_file(config, state_dir, name, LOGS), agent, count):
            _show(entry, as_json)
        return
    request: Message = {"t": "logs", "lines": count, "follow": follow}
    if agent:
        request["agent"] = agent
    try:
        with connect(name, socket_, None if follow else 30.0) as client:
            for frame in client.stream(request):
                kind = frame.get("t")
                if kind == "error":
                    raise click.ClickException(str(frame.get("error")))
                event = frame.get("event")
                if kind != "chunk" or not isinstance(event, dict):
                    continue
                if event.get("event") == "dropped":
                    click.echo(f"({event.get('count')} lines dropped: this view was too slow)", err=True)
                else:
                    _show(event, as_json)
    except KeyboardInterrupt:
        return
    except ConnectionError as exc:
        if not follow:
            raise click.ClickException(f"lost the system: {exc}") from None
        click.echo("the system stopped", err=True)


__all__ = ["line_text", "logs"]
