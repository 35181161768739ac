"""Reading the run history (history.db): the queries both the supervisor and `llmling history` without a running
system use, on a connection either of them opened. Imports sqlite3 and json only, so the CLI's offline path stays
light.

The offline reader opens the file read-only (`open_read_only`): while a system writes it (WAL), readers see the
last committed transaction and never block the writer.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

Message = dict[str, Any]
TOTALS_QUERY = (
    "SELECT COUNT(*) AS runs, SUM(prompt_tokens) AS prompt_tokens, SUM(completion_tokens) AS completion_tokens, "
    "SUM(total_tokens) AS total_tokens, SUM(cost) AS cost FROM runs WHERE agent = ?"
)


def open_read_only(path: Path) -> sqlite3.Connection:
    """The database at `path`, read-only. Raises sqlite3.Error (also when the file does not exist)."""
    db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=5.0)
    db.row_factory = sqlite3.Row
    return db


def agents(db: sqlite3.Connection) -> list[str]:
    """Every agent with a recorded run."""
    return [row[0] for row in db.execute("SELECT DISTINCT agent FROM runs ORDER BY agent")]


def runs(db: sqlite3.Connection, agent: str, limit: int) -> list[Message]:
    """The last `limit` runs of `agent` (0: all), oldest first."""
    rows = db.execute(
        "SELECT * FROM runs WHERE agent = ? ORDER BY seq DESC LIMIT ?", (agent, limit or -1)
    ).fetchall()
    return [run_from_row(row) for row in reversed(rows)]


def totals(db: sqlite3.Connection, agent: str) -> Message:
    """runs, prompt/completion/total tokens (0 when none) and cost (None when unknown) of `agent`."""
    row = db.execute(TOTALS_QUERY, (agent,)).fetchone()
    return {key: row[key] if key == "cost" else row[key] or 0 for key in row.keys()}  # noqa: SIM118


def run_from_row(row: sqlite3.Row) -> Message:
    """One run as the `history` reply carries it."""
    try:
        usage = json.loads(row["usage"]) if row["usage"] else {}
    except ValueError:
        usage = {}
    usage.update(
        {
            "prompt_tokens": row["prompt_tokens"],
            "completion_tokens": row["completion_tokens"],
            "total_tokens": row["total_tokens"],
            "cost": row["cost"],
        }
    )
    return {
        "seq": row["seq"],
        "id": row["run_id"],
        "trace_id": row["trace_id"],
        "parent_id": row["parent_id"],
        "finished_at": row["finished_at"],
        "prompt": row["prompt"],
        "content": row["content"],
        "usage": usage,
        "elapsed": row["elapsed"],
        "session": row["session"],
    }


__all__ = ["agents", "open_read_only", "run_from_row", "runs", "totals"]
