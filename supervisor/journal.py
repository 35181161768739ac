"""The journal: every unit of work the system accepted, in SQLite, until it reaches an outcome.

A unit is one run (a `send`, a webhook delivery, a trigger's firing, a background tick, a forwarded run). It is
written before it is acknowledged (the client's `accepted` frame, the webhook's 202) or forwarded, and marked
`done` in the same transaction that inserts its row into the run history (`runs`), so history and journal
always agree. Its life, one named state at a time (Oban's shape):

    queued ──▶ running ──▶ done
                  │  ▲
                  ▼  │ (after backoff, same id, attempt + 1)
                retry ──▶ dead   (attempts exhausted, a failure not retried, or the agent cannot take it)

`done` is written by deleting the unit's row in the transaction that inserts its history row: a unit is in
exactly one of the two tables, never both, never neither (the history row is the record of a done unit, and
the journal stays as small as the work in flight). `running` is written for redeliveries (attempt >= 2) only,
to keep their attempt count; a first attempt in flight reads `queued` on disk, and both are resumed alike.

The table lives in the system's `history.db` (WAL). One writer task owns the one writing connection; its
SQLite calls run on one worker thread, so the event loop never waits for the disk. Writes are group-committed:
every change made while the previous transaction was on the disk goes into the next one, and the callers that
need the commit (acknowledging, recording an outcome) await it. `durability: batch` commits with
`synchronous=NORMAL` (a committed unit survives a crash of the process), `sync` with `synchronous=FULL` (also
a power loss). A lock file keeps one running system per journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from loguru import logger

from llmling.errors import LLMlingError, StartupError

Message = dict[str, Any]
Durability = Literal["sync", "batch", "off"]
State = Literal["queued", "running", "retry", "done", "dead"]
# States of a unit that has not reached its outcome: what the next `up` resumes.
OPEN_STATES: tuple[State, ...] = ("queued", "running", "retry")

SCHEMA = """
CREATE TABLE IF NOT EXISTS units (
    id TEXT PRIMARY KEY,            -- the run id, the same on every attempt
    trace_id TEXT NOT NULL,
    parent_id TEXT,                 -- the run whose reply was forwarded into this one (NULL for a root)
    agent TEXT NOT NULL,
    prompt TEXT NOT NULL,
    hops INTEGER NOT NULL,
    source TEXT NOT NULL,           -- send | api | webhook | file | time | background | forward
    attempt INTEGER NOT NULL,       -- deliveries started so far (0: never started)
    state TEXT NOT NULL,            -- queued | running | retry | dead (done: the row is deleted)
    accepted_at REAL NOT NULL,      -- Unix time the unit was written
    next_at REAL,                   -- retry: Unix time its next attempt is due
    finished_at REAL,               -- dead: Unix time
    last_error TEXT                 -- the last attempt's error; for `dead`, the reason
) WITHOUT ROWID;
"""
# No secondary index: the table holds only the units in flight and the dead letters, and every write of the
# hot path (insert, delete on done) would pay for one.
_INSERT = (
    "INSERT OR REPLACE INTO units (id, trace_id, parent_id, agent, prompt, hops, source, attempt, state, "
    "accepted_at, next_at, finished_at, last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPDATE = "UPDATE units SET attempt = ?, state = ?, next_at = ?, finished_at = ?, last_error = ? WHERE id = ?"
_DELETE = "DELETE FROM units WHERE id = ?"
# At most this many dead letters in one listing.
MAX_LISTED = 1000


class JournalError(LLMlingError):
    """The journal could not be written: nothing was acknowledged."""


@dataclass(slots=True, eq=False)
class Unit:
    """One accepted run. Invariant: `id` never changes between attempts; `attempt` counts the deliveries
    started (1-based while running); `state` is the last state written (or about to be)."""

    id: str
    trace_id: str
    parent_id: str | None
    agent: str
    prompt: str
    hops: int
    source: str
    attempt: int = 0
    state: State = "queued"
    accepted_at: float = field(default_factory=time.time)
    next_at: float | None = None
    finished_at: float | None = None
    last_error: str | None = None

    def row(self) -> tuple[Any, ...]:
        return (
            self.id,
            self.trace_id,
            self.parent_id,
            self.agent,
            self.prompt,
            self.hops,
            self.source,
            self.attempt,
            self.state,
            self.accepted_at,
            self.next_at,
            self.finished_at,
            self.last_error,
        )

    def change(self) -> tuple[Any, ...]:
        return (self.attempt, self.state, self.next_at, self.finished_at, self.last_error, self.id)

    def info(self) -> Message:
        """The unit as a dead letter is listed."""
        return {
            "id": self.id,
            "trace_id": self.trace_id,
            "parent_id": self.parent_id,
            "agent": self.agent,
            "prompt": self.prompt,
            "hops": self.hops,
            "source": self.source,
            "attempts": self.attempt,
            "state": self.state,
            "accepted_at": self.accepted_at,
            "finished_at": self.finished_at,
            "reason": self.last_error,
        }


class _Batch:
    """The changes of one transaction, in the order they were made; inserts go first (a change of a unit
    inserted in the same batch must find it)."""

    __slots__ = ("changes", "done", "history", "inserts", "waiters")

    def __init__(self) -> None:
        self.inserts: list[tuple[Any, ...]] = []
        self.changes: list[tuple[Any, ...]] = []
        self.done: list[tuple[str]] = []
        self.history: list[tuple[Any, ...]] = []
        self.waiters: list[asyncio.Future[None]] = []

    def __bool__(self) -> bool:
        return bool(self.inserts or self.changes or self.done or self.history or self.waiters)


class Journal:
    """The units of one system. `open()` (raises StartupError), `start(spawn)` the writer, `close()` last.

    Every write method is synchronous and queues its change for the next transaction; the `await`able ones
    return once it is committed (raising JournalError when the transaction failed). Changes queued in one
    synchronous stretch of code always commit together.
    """

    def __init__(self, path: Path, durability: Durability) -> None:
        self.path = path
        self.durability = durability
        self.log = logger.bind(agent="journal")
        # The history row of a finished run (`HistoryService.row`); set by the supervisor.
        self.history_row: Callable[[Message], tuple[Any, ...]] | None = None
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        # Invariant: only the writer thread touches `_db` while the writer task runs.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmling-journal")
        self._batch = _Batch()
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._insert_run = ""
        self.broken: str | None = None

    # -- life -----------------------------------------------------------------------------------------------
    def open(self) -> None:
        """Open (create) the database and take the system's journal lock. Raises StartupError naming the path."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            lock = self.path.with_name("journal.lock")
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise StartupError(
                    f"cannot open the journal {self.path}: another running system uses it ({lock} is locked)"
                ) from None
            self._lock_fd = fd
            db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if self.durability == 'sync' else 'NORMAL'}")
            # Imported here: the history module imports the control requests, which import the router.
            from llmling.supervisor.history import COLUMNS
            from llmling.supervisor.history import SCHEMA as HISTORY_SCHEMA

            db.executescript(HISTORY_SCHEMA + SCHEMA)
            self._insert_run = f"INSERT INTO runs ({COLUMNS}) VALUES ({', '.join('?' * 14)})"
            self._db = db
        except StartupError:
            raise
        except (sqlite3.Error, OSError) as exc:
            self._release()
            raise StartupError(f"cannot open the journal {self.path}: {exc}") from None

    def start(self, spawn: Callable[..., asyncio.Task[Any]]) -> None:
        """Start the writer task as a task of its owner (`spawn`); `close()` ends it."""
        self._writer = spawn(self._write(), name="journal-writer")

    async def close(self) -> None:
        """Commit what is queued, end the writer, close the database and release the lock."""
        self._closing = True
        writer, self._writer = self._writer, None
        if writer is not None:
            self._wake.set()
            await writer
        batch, self._batch = self._batch, _Batch()
        if batch:
            await self._commit_and_resolve(batch)
        await asyncio.get_running_loop().run_in_executor(self._thread, self._release)
        self._thread.shutdown(wait=False)

    def abandon(self) -> None:
        """Close the database and release the lock now, whatever is queued (after the writer's owner failed)."""
        if self._writer is None or self._writer.done():
            self._release()

    def _release(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- writes ---------------------------------------------------------------------------------------------
    def accept(self, unit: Unit) -> asyncio.Future[None]:
        """Write a new unit; the future resolves once it is committed (acknowledge only then)."""
        self._batch.inserts.append(unit.row())
        return self._waiter()

    def update(self, unit: Unit) -> None:
        """Write the unit's attempt/state/next_at/finished_at/last_error (`flush()` waits for it)."""
        self._batch.changes.append(unit.change())
        self._wake.set()

    def done(self, unit: Unit, finished: Message, forwarded: Iterable[Unit] = ()) -> asyncio.Future[None]:
        """Mark `unit` done, insert its history row (from its `run_finished` event) and journal the runs its
        reply was forwarded into: one transaction."""
        unit.state = "done"
        unit.finished_at = time.time()
        batch = self._batch
        batch.inserts.extend(child.row() for child in forwarded)
        batch.done.append((unit.id,))
        if self.history_row is not None:
            batch.history.append(self.history_row(finished))
        return self._waiter()

    def _waiter(self) -> asyncio.Future[None]:
        future = asyncio.get_running_loop().create_future()
        self._batch.waiters.append(future)
        self._wake.set()
        return future

    async def _write(self) -> None:
        while True:
            await self._wake.wait()
            if not self._closing:
                # Let every ready callback queue its change first: they join this transaction.
                await asyncio.sleep(0)
            self._wake.clear()
            batch, self._batch = self._batch, _Batch()
            if batch:
                await self._commit_and_resolve(batch)
            if self._closing and not self._batch:
                return

    async def _commit_and_resolve(self, batch: _Batch) -> None:
        error: BaseException | None = None
        try:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._commit, batch)
        except (sqlite3.Error, OSError) as exc:
            error = exc
            if self.broken is None:
                self.log.error("cannot write the journal {}: {}", self.path, exc)
            self.broken = str(exc)
        self._resolve(batch, error)

    def _resolve(self, batch: _Batch, error: BaseException | None) -> None:
        for future in batch.waiters:
            if future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(JournalError(f"cannot write the journal {self.path}: {error}"))

    def _commit(self, batch: _Batch) -> None:
        db = self._db
        if db is None:
            raise sqlite3.OperationalError("the journal is closed")
        db.execute("BEGIN IMMEDIATE")
        try:
            if batch.inserts:
                db.executemany(_INSERT, batch.inserts)
            if batch.changes:
                db.executemany(_UPDATE, batch.changes)
            if batch.done:
                db.executemany(_DELETE, batch.done)
            if batch.history:
                rows = [(*row[:-1], json.dumps(row[-1], default=str)) for row in batch.history]
                db.executemany(self._insert_run, rows)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # -- reads (on the writer's thread, after what was queued before them) ---------------------------------
    async def _read(self, query: Callable[[sqlite3.Connection], Any]) -> Any:
        await self.flush()

        def run() -> Any:
            if self._db is None:
                raise sqlite3.OperationalError("the journal is closed")
            return query(self._db)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, run)
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(f"cannot read the journal {self.path}: {exc}") from None

    async def flush(self) -> None:
        """Return once everything queued so far is committed."""
        if self._batch:
            await self._waiter()

    async def open_units(self) -> list[Unit]:
        """The units without an outcome (queued, running, retry), oldest first: what a start resumes."""
        return await self._read(
            lambda db: [_unit(row) for row in db.execute(f"{_SELECT} WHERE state != 'dead' ORDER BY accepted_at")]
        )

    async def count_open(self) -> int:
        return int(
            await self._read(
                lambda db: db.execute("SELECT COUNT(*) FROM units WHERE state != 'dead'").fetchone()[0]
            )
        )

    async def dead_letters(self, agent: str | None = None, limit: int = MAX_LISTED) -> list[Unit]:
        where, params = _agent_filter(agent)
        return await self._read(
            lambda db: [
                _unit(row)
                for row in db.execute(
                    f"{_SELECT} WHERE state = 'dead'{where} ORDER BY finished_at LIMIT ?", (*params, limit)
                )
            ]
        )

    async def revive(self, ids: list[str] | None, agent: str | None = None) -> list[Unit]:
        """Move dead letters back to `queued` with a fresh attempt budget; `ids` None: every one (of `agent`).
        Returns the revived units."""

        def query(db: sqlite3.Connection) -> list[Unit]:
            if ids is None:
                where, params = _agent_filter(agent)
                rows = db.execute(f"{_SELECT} WHERE state = 'dead'{where}", params).fetchall()
            else:
                marks = ", ".join("?" * len(ids))
                rows = db.execute(f"{_SELECT} WHERE state = 'dead' AND id IN ({marks})", ids).fetchall()
            units = [_unit(row) for row in rows]
            for unit in units:
                unit.state, unit.attempt, unit.next_at, unit.finished_at = "queued", 0, None, None
            db.execute("BEGIN IMMEDIATE")
            db.executemany(_UPDATE, [unit.change() for unit in units])
            db.execute("COMMIT")
            return units

        return await self._read(query)

    async def purge(self, agent: str | None = None) -> int:
        """Delete the dead letters (of `agent`); returns how many."""

        def query(db: sqlite3.Connection) -> int:
            where, params = _agent_filter(agent)
            return db.execute(f"DELETE FROM units WHERE state = 'dead'{where}", params).rowcount

        return int(await self._read(query))


_SELECT = (
    "SELECT id, trace_id, parent_id, agent, prompt, hops, source, attempt, state, accepted_at, next_at, "
    "finished_at, last_error FROM units"
)


def _agent_filter(agent: str | None) -> tuple[str, tuple[Any, ...]]:
    return ("", ()) if agent is None else (" AND agent = ?", (agent,))


def _unit(row: tuple[Any, ...]) -> Unit:
    return Unit(*row)


def journal_path(state_path: Path) -> Path:
    """The journal shares the run history's database, so an outcome and its history row commit together."""
    return state_path / "history.db"


__all__ = ["OPEN_STATES", "Durability", "Journal", "JournalError", "State", "Unit", "journal_path"]
