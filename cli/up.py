"""`llmling up`: load the config, run the supervisor in this process, show start-up progress."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from llmling.config import SystemConfig

Message = dict[str, Any]
# The exit status of `up` when it stopped with accepted runs not finished (kept in the journal).
LEFT_IN_JOURNAL = 3


class Progress:
    """Prints agent state changes while the system starts, then only what needs attention."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total = total
        self.quiet = quiet
        self.ready: set[str] = set()
        self.started = time.perf_counter()
        self.up = False
        # (agent, component) → when it started: capability components are shown with their init time.
        self.components: dict[tuple[str, str], float] = {}

    def __call__(self, event: Message) -> None:
        kind = event.get("event")
        if kind == "component" and not self.up and event.get("component") != "backend":
            self._component(event)
        elif kind == "agent_state":
            # A replica's event: its own state and `name#i` (`state` is then the agent's as a whole).
            name, state = event["agent"], event.get("process_state", event["state"])
            agent = f"{name}#{event['replica']}" if "replica" in event else name
            if state == "ready":
                self.ready.add(name)
                if not self.up:
                    self._say(f"  {agent:<20} ready (pid {event.get('pid')})  [{len(self.ready)}/{self.total}]")
                    return
            if state == "failed" and not self.up:
                self._say(f"  {agent:<20} failed: {event.get('error')}", force=True)
                return
            if self.up and state in ("restarting", "failed", "unreachable"):
                extra = f" in {event.get('delay')} s" if state == "restarting" else ""
                self._say(f"  {agent:<20} {state}{extra}", force=True)
            elif self.up and state == "ready":
                # A remote agent's event names its hosts instead of a pid.
                where = f"on {', '.join(event['hosts'])}" if event.get("hosts") else f"(pid {event.get('pid')})"
                self._say(f"  {agent:<20} ready again {where}", force=True)
        elif kind == "system_ready":
            self.up = True
            elapsed = time.perf_counter() - self.started
            failed = event.get("failed") or []
            note = f", {len(failed)} failed ({', '.join(failed)})" if failed else ""
            self._say(
                f"system {event['name']!r} ready: {event['agents'] - len(failed)} of {event['agents']} agents"
                f"{note} in {elapsed:.2f} s (Ctrl+C to stop)",
                force=bool(failed),
            )
        elif kind == "system_stopping":
            self._say("stopping…", force=True)
        elif kind == "resuming":
            self._say(f"resuming {event['count']} accepted runs", force=True)
        elif kind == "dead_letter" and self.up:
            self._say(f"  {event['agent']:<20} dead letter {event['id']}: {event['reason']}", force=True)
        elif kind == "reloaded":
            self._say(f"reloaded: {event['summary']}", force=True)
        elif kind == "reload_failed":
            self._say(f"reload refused: {event['error']}", force=True)
        elif kind == "max_hops":
            self._say(f"  trace {event['trace_id']} stopped at {event['agent']}: max_hops reached", force=True)

    def _component(self, event: Message) -> None:
        key = (str(event.get("agent")), str(event.get("component")))
        if event.get("state") == "starting":
            self.components[key] = time.perf_counter()
        elif event.get("state") == "ready" and key in self.components:
            elapsed = time.perf_counter() - self.components.pop(key)
            self._say(f"  {key[0]:<20} · {key[1]} ready in {elapsed:.2f} s")

    def _say(self, text: str, force: bool = False) -> None:
        if force or not self.quiet:
            click.echo(text, err=True)


def configure_logging(level: str) -> None:
    from llmling.logs import configure

    configure(level)  # redacting, without `diagnose`


def host(
    path: str,
    socket: str | None,
    log_level: str,
    listener: Callable[[SystemConfig], Callable[[Message], None]],
    **serve_options: Any,
) -> int:
    """Run the system of the config at `path` in this process until it stops; return the exit status:
    2 for an invalid config (nothing started), 1 when it cannot start, 0 after a requested stop that
    finished every accepted run, LEFT_IN_JOURNAL when some were left (in the journal for the next `up`).
    `listener(config)` makes the event listener (progress, a watch printer)."""
    from llmling.config import load_config
    from llmling.errors import ConfigError, StartupError

    try:
        config = load_config(path)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    from llmling.config.state import migration_note

    note = None if config.state_dir else migration_note(config.name, config.state_path)
    if note:
        click.echo(note, err=True)
    configure_logging(log_level)
    from llmling.supervisor.serve import run

    try:
        left = run(config, socket=socket, on_event=listener(config), log_level=log_level, **serve_options)
    except StartupError as exc:
        click.echo(f"error: {exc}", err=True)
        return 1
    finally:
        # The system has ended and the process exits next: the interpreter's final collections skip a frozen
        # heap (measured with 8 agents: the supervisor exits ~35 ms sooner after Ctrl+C, ~60 instead of ~95 ms).
        gc.freeze()
    if left:
        where = (
            "left in the journal for the next start" if config.durability != "off" else "lost (durability: off)"
        )
        click.echo(f"{left} accepted runs {where}", err=True)
        return LEFT_IN_JOURNAL
    return 0


def run_up(
    path: str, socket: str | None, log_level: str, quiet: bool, reload: bool = False, dashboard: str | None = None
) -> int:
    def progress(config: SystemConfig) -> Progress:
        shown = Progress(len(config.agents), quiet)
        shown._say(f"starting {config.name!r}: {', '.join(config.agents)}")
        return shown

    if dashboard is None:
        return host(path, socket, log_level, progress, watch_config=reload)
    from llmling.cli.dashboard import announce, new_token, parse_address

    address, port = parse_address(dashboard)
    return host(
        path, socket, log_level, progress, watch_config=reload, dashboard=(address, port, new_token(), announce)
    )
