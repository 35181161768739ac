"""What the dashboard knows of a system, from its events: agents, a bounded event feed, run times, traces.

Every bound is here: FEED events, TRACES traces of at most RUNS_PER_TRACE runs each, DURATIONS run times per
agent. Texts are kept as previews of PREVIEW characters; nothing else of a run (no environment, no config) is
ever held, so nothing else can be shown.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, field
from typing import Any

from llmling.observe import adapter
from llmling.observe.metrics import Metrics
from llmling.observe.runs import RunEnd, RunStart, stamp

Message = dict[str, Any]
FEED = 1000
TRACES = 300
RUNS_PER_TRACE = 500
DURATIONS = 1000
PREVIEW = 240


def preview(text: Any, width: int = PREVIEW) -> str:
    """`text` on one line, cut to `width` characters (only its start is read: a long reply costs no more)."""
    line = " ".join(str(text or "")[: 4 * width].split())
    return line if len(line) <= width else line[: width - 1] + "…"


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass(slots=True)
class RunNode:
    """One run of a trace, as the tree draws it. `status`: running, retrying, ok, failed or dead."""

    id: str
    agent: str
    parent_id: str | None
    status: str = "running"
    attempt: int = 1
    started_at: float | None = None
    ended_at: float | None = None
    seconds: float | None = None
    cost: float | None = None
    tokens: int = 0
    prompt: str = ""
    content: str = ""
    error: str | None = None


@dataclass(slots=True)
class TraceView:
    id: str
    started_at: float
    # Invariant: at most RUNS_PER_TRACE runs, in the order they started.
    runs: OrderedDict[str, RunNode] = field(default_factory=OrderedDict)

    def summary(self) -> Message:
        runs = list(self.runs.values())
        root = next((run for run in runs if run.parent_id is None or run.parent_id not in self.runs), None)
        ends = [run.ended_at for run in runs if run.ended_at is not None]
        return {
            "id": self.id,
            "started_at": self.started_at,
            "root": root.agent if root else None,
            "prompt": root.prompt[:80] if root else "",
            "runs": len(runs),
            "failed": sum(run.status in ("failed", "dead") for run in runs),
            "running": sum(run.status in ("running", "retrying") for run in runs),
            "seconds": (max(ends) - self.started_at) if ends else None,
            "cost": sum(run.cost or 0.0 for run in runs) if any(run.cost is not None for run in runs) else None,
        }

    def tree(self) -> Message:
        return {**self.summary(), "nodes": [asdict(run) for run in self.runs.values()]}


class DashboardState:
    def __init__(self) -> None:
        # The last status seen (the subscription's first event, then the poller's), or None before it.
        self.status: Message | None = None
        self.connected = False
        self.metrics = Metrics(lambda: self.status)
        # Invariant: the newest FEED entries, in order; the last one's seq is last_seq (0: none yet).
        self.feed: deque[Message] = deque(maxlen=FEED)
        self.last_seq = 0
        self.durations: dict[str, deque[float]] = {}
        self.last_seen: dict[str, float] = {}
        # Failed outcomes per agent since the dashboard attached.
        self.failed: dict[str, int] = {}
        self.traces: OrderedDict[str, TraceView] = OrderedDict()
        # One event per live-stream client, set when the feed grows (or the dashboard closes: `closed`).
        self.watchers: set[asyncio.Event] = set()
        self.closed = False

    # -- events ---------------------------------------------------------------------------------------------
    def on_event(self, event: Message) -> None:
        """Fold one event in: each is read once, by its typed view (the run events are the bulk)."""
        if (end := RunEnd.of(event)) is not None:
            self.metrics.observe(event, None, end)
            self._end(end)
            self.last_seen[end.agent] = end.ended_at
            self._add_entry(outcome_entry(end, str(event["event"])))
            return
        if (start := RunStart.of(event)) is not None:
            self.metrics.observe(event, start, None)
            self._start(start)
            self.last_seen[start.agent] = start.started_at
            self._add_entry(feed_entry(event))
            return
        kind = event.get("event")
        if kind == "subscribed" and isinstance(event.get("status"), dict):
            self.status = event["status"]
            self.connected = True
        elif kind == "disconnected":
            self.connected = False
        elif kind == "agent_state":
            self._agent_state(event)
        elif kind in (adapter.DEAD_LETTER_EVENT, adapter.RETRY_EVENT):
            self._marked(event, kind)
        self.metrics.observe(event)
        agent = event.get("agent")
        if isinstance(agent, str):
            self.last_seen[agent] = stamp(event)
        if kind != "subscribed":
            self._add_entry(feed_entry(event))

    def _agent_state(self, event: Message) -> None:
        for entry in (self.status or {}).get("agents") or ():
            if entry.get("name") == event.get("agent"):
                entry["state"] = event.get("state")
                replica = event.get("replica")
                if isinstance(replica, int):  # one process of several: its own line, not the agent's pid
                    processes = entry.get("processes") or []
                    if 0 < replica <= len(processes):
                        processes[replica - 1]["state"] = event.get("process_state")
                        if event.get("pid") is not None:
                            processes[replica - 1]["pid"] = event.get("pid")
                elif event.get("pid") is not None:
                    entry["pid"] = event.get("pid")
                if event.get("state") == "restarting":
                    entry["restarts"] = (adapter.as_int(entry.get("restarts")) or 0) + 1

    def _add_entry(self, entry: Message) -> None:
        """Number a feed entry, keep it, wake the live streams."""
        self.last_seq += 1
        entry["seq"] = self.last_seq
        self.feed.append(entry)
        for waiter in self.watchers:
            waiter.set()

    def feed_after(self, seq: int, limit: int) -> list[Message]:
        """The feed's entries after `seq`, oldest first: the newest `limit` of them at most."""
        count = min(self.last_seq - seq, len(self.feed), limit)
        if count <= 0:
            return []
        newest = list(itertools.islice(reversed(self.feed), count))
        newest.reverse()
        return newest

    def close_watchers(self) -> None:
        """Wake every live-stream client to end (the dashboard stops)."""
        self.closed = True
        for waiter in self.watchers:
            waiter.set()

    def _start(self, start: RunStart) -> None:
        node = self._node(start.trace_id, start.id, start.agent, start.parent_id, start.started_at)
        if node is not None:
            node.status, node.attempt = "running", start.attempt
            node.prompt = node.prompt or preview(start.prompt)

    def _end(self, end: RunEnd) -> None:
        if end.ok:
            if end.seconds is not None:
                durations = self.durations.get(end.agent)
                if durations is None:
                    durations = self.durations[end.agent] = deque(maxlen=DURATIONS)
                durations.append(end.seconds)
        else:
            self.failed[end.agent] = self.failed.get(end.agent, 0) + 1
        node = self._node(end.trace_id, end.id, end.agent, end.parent_id, end.started_at or end.ended_at)
        if node is None:
            return
        node.status = "ok" if end.ok else "failed"
        node.attempt, node.ended_at, node.error = end.attempt, end.ended_at, end.error
        node.seconds = end.seconds if end.seconds is not None else _since(node.started_at, end.ended_at)
        node.cost, node.tokens = end.cost, end.prompt_tokens + end.completion_tokens
        node.prompt = node.prompt or preview(end.prompt)
        node.content = preview(end.content or end.error)

    def _marked(self, event: Message, kind: str) -> None:
        """A dead letter or a retry marks its run's node."""
        trace_id, run_id = str(event.get("trace_id")), str(event.get("id"))
        node = self._node(trace_id, run_id, str(event.get("agent")), adapter.as_str(event.get("parent_id")))
        if node is not None:
            node.status = "dead" if kind == adapter.DEAD_LETTER_EVENT else "retrying"
            node.error = preview(event.get("reason") or event.get("error"))

    def _node(
        self, trace_id: str, run_id: str, agent: str, parent_id: str | None, at: float | None = None
    ) -> RunNode | None:
        trace = self.traces.get(trace_id)
        if trace is None:
            trace = self.traces[trace_id] = TraceView(trace_id, at or time.time())
            while len(self.traces) > TRACES:
                self.traces.popitem(last=False)
        node = trace.runs.get(run_id)
        if node is None:
            if len(trace.runs) >= RUNS_PER_TRACE:
                return None
            node = trace.runs[run_id] = RunNode(run_id, agent, parent_id, started_at=at)
        if node.parent_id is None and parent_id is not None:
            node.parent_id = parent_id
        return node

    # -- views ----------------------------------------------------------------------------------------------
    def agents(self) -> list[Message]:
        status = self.status or {}
        totals = status.get("totals") if isinstance(status.get("totals"), dict) else {}
        shown = []
        for entry in status.get("agents") or ():
            name = str(entry.get("name"))
            load = adapter.Load.of(entry)
            runs = (totals.get(name) or {}) if isinstance(totals, dict) else {}
            durations = list(self.durations.get(name, ()))
            processes = adapter.processes(entry)
            shown.append(
                {
                    "name": name,
                    "state": entry.get("state"),
                    "pid": entry.get("pid"),
                    "restarts": entry.get("restarts"),
                    "error": preview(entry.get("error")) if entry.get("error") else None,
                    "queued": load.queued,
                    "max_queue": load.max_queue,
                    "running": load.running,
                    "concurrency": load.concurrency,
                    "runs": runs.get("runs"),
                    "failed": self.failed.get(name, 0),
                    "tokens": runs.get("total_tokens"),
                    "cost": runs.get("cost"),
                    "p50": percentile(durations, 0.5),
                    "p95": percentile(durations, 0.95),
                    "last_seen": self.last_seen.get(name),
                    # Each process with its host (replicas, remote hosts), when the status lists them.
                    "processes": [asdict(process) for process in processes] if processes is not None else None,
                }
            )
        return shown

    def trace_list(self, limit: int = 100) -> list[Message]:
        return [trace.summary() for trace in reversed(list(self.traces.values())[-limit:])]


def _since(started: float | None, ended: float) -> float | None:
    return None if started is None else max(0.0, ended - started)


SCALARS = frozenset({str, int, float, bool})
FEED_KEYS = ("agent", "id", "trace_id", "parent_id", "state", "trigger", "kind", "code", "attempt", "pid")


def outcome_entry(end: RunEnd, kind: str) -> Message:
    """feed_entry() of an outcome event, from its typed view (the bulk of the feed: no field read twice)."""
    entry: Message = {"ts": end.ended_at, "event": kind, "agent": end.agent, "id": end.id}
    entry["trace_id"], entry["attempt"] = end.trace_id, end.attempt
    if end.parent_id is not None:
        entry["parent_id"] = end.parent_id
    if not end.ok:
        entry["kind"] = end.outcome
    text = end.error or end.content or end.prompt
    if text:
        entry["text"] = preview(text, 160)
    return entry


def feed_entry(event: Message) -> Message:
    """An event as the feed shows it (its `seq` is added when kept): its kind, agent, ids and a preview of its
    texts; no other field."""
    entry: Message = {"ts": stamp(event), "event": str(event.get("event"))}
    for key in FEED_KEYS:
        value = event.get(key)
        if type(value) in SCALARS:
            entry[key] = value
    text = event.get("error") or event.get("reason") or event.get("content") or event.get("prompt")
    if text:
        entry["text"] = preview(text, 160)
    return entry


__all__ = ["DashboardState", "RunNode", "TraceView", "feed_entry", "outcome_entry", "percentile", "preview"]
