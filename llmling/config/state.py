"""Where a system keeps its state (history.db, logs/): one folder per config, never shared by accident.

The default is `$XDG_STATE_HOME/llmling/<name>-<hash>` (`~/.local/state/llmling/...`), where `<hash>` is the
first 8 hex digits of the SHA-256 of the config file's absolute path (of the working folder for a system made
in Python without a file). Two configs with the same `name` in different folders therefore keep separate
histories; moving or renaming the config file starts a new folder. `state_dir:` in the config overrides it.

Up to 0.x the default was `$XDG_STATE_HOME/llmling/<name>`: `legacy_state_dir` names that folder so `llmling up`
can say where the old history is (move its history.db into the new folder to keep it).

Pure functions of the path and the environment: no pydantic, so the CLI can use them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# Hex digits of the config path's hash in the folder name.
HASH_DIGITS = 8


def state_base() -> Path:
    """`$XDG_STATE_HOME/llmling`, or `~/.local/state/llmling`."""
    return Path(os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")) / "llmling"


def path_key(source: Path) -> str:
    """The short hash of an absolute path."""
    return hashlib.sha256(str(source.absolute()).encode()).hexdigest()[:HASH_DIGITS]


def default_state_dir(name: str, source: Path | None) -> Path:
    """`<state base>/<name>-<hash of the config's absolute path>` (of the working folder without a file)."""
    return state_base() / f"{name}-{path_key(source if source is not None else Path.cwd())}"


def state_dir(name: str, source: Path | None, configured: str | None) -> Path:
    """`configured` (`state_dir:`, relative to the config's folder, `~` expanded) or the default."""
    if configured:
        base = source.parent if source is not None else Path.cwd()
        return base / os.path.expanduser(configured)
    return default_state_dir(name, source)


def legacy_state_dir(name: str) -> Path:
    """The folder older versions used for every config named `name`."""
    return state_base() / name


def migration_note(name: str, current: Path) -> str | None:
    """A one-line note when the old shared folder still holds a history and the new one has none."""
    old = legacy_state_dir(name) / "history.db"
    if old.is_file() and not (current / "history.db").exists():
        return (
            f"note: the run history of systems named {name!r} was kept in {old.parent}; this config now keeps "
            f"its own in {current} (move history.db there to keep the old runs)"
        )
    return None


__all__ = ["default_state_dir", "legacy_state_dir", "migration_note", "path_key", "state_base", "state_dir"]
