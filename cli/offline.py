"""`llmling history` and `llmling logs` when no system runs: read the state folder directly (history.db read-only,
sqlite3 imported on this path only; logs/<agent>.log).

Which folder: the one of `--config` (its state folder, `state_dir:` included), else `--state-dir`, else the only
state folder under `$XDG_STATE_HOME/llmling/` that holds the file wanted (of system `--name` when given).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from llmling.cli.target import nats_flags
from llmling.ipc.paths import SOCKET_ENV, is_live, runtime_dir, socket_path
from llmling.names import unknown

Message = dict[str, Any]
DB_NAME = "history.db"
LOGS = "logs"
# The most runs one `history` shows (the supervisor's bound too).
MAX_LIMIT = 1000


def system_running(name: str | None, socket_: str | None) -> bool:
    """Whether the client commands would find a running system (a live socket; with `--nats`: assumed)."""
    if nats_flags() is not None:
        return True
    if socket_ or name or os.environ.get(SOCKET_ENV):
        return is_live(socket_path(name or "", socket_))
    directory = runtime_dir()
    return directory.is_dir() and any(is_live(path) for path in directory.glob("*.sock"))


def _of_name(folder: Path, name: str) -> bool:
    """`<name>-<8 hex digits>` (or a legacy `<name>`) is a state folder of system `name`."""
    stem, _, key = folder.name.rpartition("-")
    return folder.name == name or (stem == name and len(key) == 8 and all(c in "0123456789abcdef" for c in key))


def find_state_file(config: str | None, state_dir: str | None, name: str | None, file: str) -> Path:
    """`file` (e.g. history.db) in the state folder chosen as the module says. Raises ClickException naming what
    was looked at."""
    if config:
        from llmling.config import load_config
        from llmling.errors import ConfigError

        try:
            return load_config(config).state_path / file
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
    if state_dir:
        return Path(state_dir).expanduser() / file
    from llmling.config.state import state_base

    base = state_base()
    found = sorted(path for path in base.glob(f"*/{file}") if name is None or _of_name(path.parent, name))
    if len(found) == 1:
        return found[0]
    which = f" of system {name!r}" if name else ""
    what = "run history" if file == DB_NAME else file
    if not found:
        raise click.ClickException(f"no system is running and no {what}{which} is in {base}")
    folders = ", ".join(path.parent.name for path in found)
    raise click.ClickException(
        f"no system is running and {len(found)} folders{which} in {base} hold {what} ({folders}); "
        "choose one with --config or --state-dir"
    )


def read_history(path: Path, agent: str, limit: int) -> Message:
    """The `history` reply, read from the file: {agent, path, runs, totals}. Raises ClickException."""
    import contextlib
    import sqlite3

    from llmling.supervisor import history_reader

    if not 0 <= limit <= MAX_LIMIT:
        raise click.ClickException(f"--limit must be between 0 and {MAX_LIMIT}")
    if not path.is_file():
        raise click.ClickException(f"no run history at {path}")
    try:
        with contextlib.closing(history_reader.open_read_only(path)) as db:
            known = history_reader.agents(db)
            if agent not in known:
                raise click.ClickException(f"{path}: {unknown('agent', agent, known)}")
            runs = history_reader.runs(db, agent, limit)
            totals = history_reader.totals(db, agent)
    except sqlite3.Error as exc:
        raise click.ClickException(f"cannot read the run history from {path}: {exc}") from None
    return {"agent": agent, "path": str(path), "runs": runs, "totals": totals}


def read_logs(folder: Path, agent: str | None, count: int) -> list[Message]:
    """The last `count` lines of `agent` (None: of every agent, merged by time) from the log files in `folder`,
    oldest first. Only the newest rotated file of each agent is read past the current one when needed."""
    if not folder.is_dir():
        raise click.ClickException(f"no logs in {folder}")
    import json

    agents = sorted(path.name.removesuffix(".log") for path in folder.glob("*.log"))
    if agent is not None and agent not in agents:
        raise click.ClickException(f"{folder}: {unknown('agent', agent, agents)}")
    entries: list[Message] = []
    for name in [agent] if agent else agents:
        lines: list[str] = []
        for path in (folder / f"{name}.log", folder / f"{name}.log.1"):
            if len(lines) >= count or not path.is_file():
                break
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines() + lines
        for line in lines[-count:] if count else []:
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue  # a line cut by a crash
    entries.sort(key=lambda entry: float(entry.get("ts") or 0.0))
    return entries[-count:] if count else []


__all__ = ["find_state_file", "read_history", "read_logs", "system_running"]
