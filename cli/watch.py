"""`llmling watch`: a live view of a system's events; starts the system when none runs for the config.

Attaching (a system for the config, `--name` or `--socket` is already running) subscribes to its event stream
over the control socket and imports nothing heavy: no pydantic, litellm or aiohttp. Ctrl+C then only
detaches. Otherwise the system is started in this process (like `llmling up`) and Ctrl+C stops it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from llmling.cli.complete import agent_names
from llmling.cli.target import connect_nats, nats_flags, with_nats
from llmling.ipc.client import Client, FrameClient, NotRunning
from llmling.ipc.paths import SOCKET_ENV, is_live, socket_path

if TYPE_CHECKING:
    from llmling.config import SystemConfig

Message = dict[str, Any]
PREVIEW = 72


def preview(text: Any, width: int = PREVIEW) -> str:
    """One line: whitespace folded, cut at `width` characters with an ellipsis."""
    line = " ".join(str(text or "").split())
    return line if len(line) <= width else line[: width - 1] + "…"


def _short(run_id: Any) -> str:
    return str(run_id or "-")


def describe(event: Message) -> tuple[str, str, str] | None:
    """(who, what, details) of an event for the human view, or None for events not shown."""
    kind = event.get("event")
    agent = str(event.get("agent") or "")
    if kind == "agent_state":
        # A replica's event names it (`name#i`) and carries its own state in `process_state`.
        state = event.get("process_state", event.get("state"))
        pid = event.get("pid")
        extra = f" (pid {pid})" if pid and state in ("ready", "starting") else ""
        if state == "failed":
            extra = f": {event.get('error')}"
        elif state == "restarting":
            extra = f" in {event.get('delay')} s"
        who = f"{agent}#{event['replica']}" if "replica" in event else agent
        return who, "state", f"{state}{extra}"
    if kind == "trigger_fired":
        detail = ""
        changes = event.get("changes")
        if changes:
            first = changes[0]
            more = f" (+{len(changes) - 1})" if len(changes) > 1 else ""
            detail = f" {first.get('change')} {first.get('path')}{more}"
        elif event.get("path"):
            detail = f" POST {event.get('path')} ({event.get('bytes')} bytes)"
        elif event.get("time"):
            detail = f" at {event.get('time')}"
        return (
            agent,
            "trigger",
            f"{event.get('kind')} {event.get('trigger')} fired{detail}"
            f" → run {_short(event.get('id'))} trace {event.get('trace_id')}",
        )
    if kind == "trigger_skipped":
        return agent, "trigger", f"{event.get('kind')} {event.get('trigger')} skipped ({event.get('reason')})"
    if kind == "webhook_rejected":
        who = f"webhook {event.get('trigger')}" if event.get("trigger") else "webhook"
        return (
            agent or "system",
            "trigger",
            f"{who} {event.get('path')} refused {event.get('code')}: {event.get('reason')}",
        )
    if kind == "trigger_state":
        state = "enabled" if event.get("enabled") else "disabled"
        return agent, "trigger", f"{event.get('kind')} {event.get('trigger')} {state}"
    if kind == "run_started":
        parent = f" from {event.get('parent_id')}" if event.get("parent_id") else ""
        started = f"started {_short(event.get('id'))} trace {event.get('trace_id')}{parent}"
        return agent, "run", f"{started}: {preview(event.get('prompt'))}"
    if kind == "run_finished":
        elapsed = event.get("elapsed_total") or event.get("elapsed") or 0.0
        return (
            agent,
            "run",
            f"finished {_short(event.get('id'))} trace {event.get('trace_id')} in {elapsed:.2f} s: "
            f"{preview(event.get('content'))}",
        )
    if kind == "run_failed":
        return (
            agent,
            "run",
            f"failed {_short(event.get('id'))} trace {event.get('trace_id')}: {preview(event.get('error'))}",
        )
    if kind == "run_retry":
        return (
            agent,
            "run",
            f"retry {_short(event.get('id'))} attempt {event.get('attempt')} failed ({event.get('kind')}), "
            f"again in {event.get('delay', 0.0):.2f} s: {preview(event.get('error'))}",
        )
    if kind == "dead_letter":
        return (
            agent,
            "dead",
            f"{_short(event.get('id'))} after {event.get('attempts')} attempts: {preview(event.get('reason'))}",
        )
    if kind == "resuming":
        return "system", "resuming", f"{event.get('count')} accepted runs"
    if kind == "background_started":
        count = f", {event.get('max_count')} runs" if event.get("max_count") else ""
        return agent, "background", f"every {event.get('interval')} s{count}: {preview(event.get('prompt'), 40)}"
    if kind == "background_run":
        return (
            agent,
            "background",
            f"run #{event.get('count')} → {_short(event.get('id'))} trace {event.get('trace_id')}",
        )
    if kind == "background_skipped":
        return agent, "background", "tick skipped: previous run still in flight"
    if kind == "background_stopped":
        return agent, "background", f"stopped ({event.get('reason')}) after {event.get('runs')} runs"
    if kind == "max_hops":
        return agent, "route", f"trace {event.get('trace_id')} stopped: max_hops reached"
    if kind == "connection_stopped":
        return str(event.get("source")), "route", f">> {event.get('target')} ended by its stop condition"
    if kind == "system_ready":
        failed = event.get("failed") or []
        note = f", failed: {', '.join(failed)}" if failed else ""
        return "system", "ready", f"{event.get('name')}: {event.get('agents')} agents{note}"
    if kind == "system_stopping":
        return "system", "stopping", str(event.get("name") or "")
    if kind == "system_stopped":
        return "system", "stopped", str(event.get("name") or "")
    if kind == "subscribed":
        status = event.get("status") or {}
        agents = ", ".join(f"{a.get('name')}={a.get('state')}" for a in status.get("agents", []))
        return "system", "attached", f"{status.get('name')} (pid {status.get('pid')}): {agents}"
    if kind == "dropped":
        return "system", "dropped", f"{event.get('count')} events (this view was too slow)"
    return None


class Lineage:
    """How deep each run sits in its message tree, so a forwarded run is drawn under its parent.

    Invariant: at most `limit` runs are remembered (the oldest are forgotten first); a run whose parent is
    forgotten or unknown (started before the watch attached) is drawn at the top level.
    """

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self.depths: dict[str, int] = {}

    def depth(self, event: Message) -> int:
        run_id = event.get("id")
        if not isinstance(run_id, str):
            return 0
        if event.get("event") == "run_started":
            parent = self.depths.get(str(event.get("parent_id")))
            self.depths[run_id] = 0 if parent is None else parent + 1
            if len(self.depths) > self.limit:
                del self.depths[next(iter(self.depths))]
        return self.depths.get(run_id, 0)

    @staticmethod
    def draw(who: str, depth: int) -> str:
        """`summarizer` under its parent: `  └ summarizer` (two spaces a level)."""
        return f"{'  ' * (depth - 1)}└ {who}" if depth else who


class Printer:
    """Writes one line per event to stdout: human-readable (forwarded runs drawn under their parents), or one
    JSON object a line with `as_json`."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.lineage = Lineage()

    def __call__(self, event: Message) -> None:
        if "ts" not in event:
            event = {**event, "ts": time.time()}
        if self.as_json:
            line = json.dumps(event, ensure_ascii=False, default=str)
        else:
            described = describe(event)
            if described is None:
                return
            who, what, details = described
            if what == "run":
                who = Lineage.draw(who, self.lineage.depth(event))
            stamp = time.strftime("%H:%M:%S", time.localtime(float(event["ts"])))
            line = f"{stamp}  {who:<16} {what:<10} {details}"
        try:
            click.echo(line)
            sys.stdout.flush()
        except BrokenPipeError:  # `llmling watch | head`: stop quietly
            os._exit(0)


def _yaml_name(path: Path) -> str | None:
    """The system name a config declares (`name:`), or None when it cannot be read cheaply."""
    try:
        import yaml

        data = yaml.safe_load(path.read_text())
    except Exception:  # unreadable or invalid: loading the config will say why
        return None
    name = data.get("name") if isinstance(data, dict) else None
    if name is None:
        return path.stem
    if isinstance(name, str) and "${" not in name:
        return name
    return None


def target_socket(config: str | None, name: str | None, socket_: str | None) -> Path | None:
    """The control socket the watch is about; None when it can only be known by loading the config."""
    if socket_ or os.environ.get(SOCKET_ENV):
        return socket_path(name or "", socket_)
    if name:
        return socket_path(name)
    if config:
        declared = _yaml_name(Path(config))
        return socket_path(declared) if declared else None
    return None


def attach(client: FrameClient, printer: Printer, agents: list[str]) -> int:
    """Print the system's events until it stops (0) or Ctrl+C (detach, 0)."""
    request: Message = {"t": "subscribe"}
    if agents:
        request["agents"] = agents
    try:
        with client:
            for frame in client.stream(request):
                if frame.get("t") == "chunk" and isinstance(frame.get("event"), dict):
                    printer(frame["event"])
                elif frame.get("t") == "error":
                    raise click.ClickException(str(frame.get("error")))
    except KeyboardInterrupt:
        if not printer.as_json:
            click.echo("detached (the system keeps running)", err=True)
        return 0
    except ConnectionError:
        if not printer.as_json:
            click.echo("the system stopped", err=True)
        return 0
    return 0


def start(config: str, socket_: str | None, printer: Printer, log_level: str, agents: list[str]) -> int:
    """Run the system of `config` here, printing its events, until Ctrl+C or `llmling stop`."""
    from llmling.cli.up import host

    wanted = set(agents)

    def on_event(event: Message) -> None:
        if not wanted or event.get("agent") in (None, *wanted):
            printer(event)

    def listener(system: SystemConfig) -> Callable[[Message], None]:
        from llmling.names import unknown

        for agent in wanted:
            if agent not in system.agents:
                raise click.ClickException(unknown("agent", agent, system.agents))
        if not printer.as_json:
            click.echo(f"starting {system.name!r} (Ctrl+C to stop)", err=True)
        return on_event

    return host(config, socket_, log_level, listener)


@click.command()
@click.argument("config_arg", metavar="[CONFIG]", required=False, type=click.Path(dir_okay=False))
@click.option("--config", "-c", "config_opt", type=click.Path(dir_okay=False), help="the system's config file")
@click.option("--name", "-n", help="system name (default: from CONFIG, or the only system running)")
@click.option("--socket", "socket_", envvar=SOCKET_ENV, help="control socket path")
@click.option("--json", "as_json", is_flag=True, help="one JSON object a line")
@click.option(
    "--agent",
    "-a",
    "agents",
    multiple=True,
    shell_complete=agent_names,
    help="only events of this agent (repeatable)",
)
@click.option("--log-level", default="WARNING", show_default=True, help="log level when this starts the system")
@with_nats
def watch(
    config_arg: str | None,
    config_opt: str | None,
    name: str | None,
    socket_: str | None,
    as_json: bool,
    agents: tuple[str, ...],
    log_level: str,
) -> None:
    """Show a system's events live (triggers, runs, agent states) until Ctrl+C.

    With CONFIG (or --config), attach to its system if it runs, else start it here with its triggers;
    Ctrl+C detaches from a running system, or stops the one started here. Without CONFIG, attach to the
    only system running (or the one named with --name/--socket).
    """
    if config_arg and config_opt and config_arg != config_opt:
        raise click.UsageError("give the config once (CONFIG or --config)")
    config = config_arg or config_opt
    printer = Printer(as_json)
    flags = nats_flags()
    if flags is not None:  # a system on another host: attach only
        remote = name or (_yaml_name(Path(config)) if config else None)
        sys.exit(attach(connect_nats(remote, flags), printer, list(agents)))
    path = target_socket(config, name, socket_)
    if path is None and config is None:
        from llmling.cli.target import resolve

        path = resolve(None, None)
    if path is not None and is_live(path):
        try:
            client = Client(path)
        except NotRunning as exc:
            raise click.ClickException(str(exc)) from None
        sys.exit(attach(client, printer, list(agents)))
    if config is None:
        raise click.ClickException(f"no system is running on {path}; give a CONFIG to start one")
    sys.exit(start(config, socket_, printer, log_level, list(agents)))


__all__ = ["Lineage", "Printer", "describe", "target_socket", "watch"]
