"""What the dashboard knows of a system, from its events: agents, a bounded event feed, run times, traces.

Every bound is here: FEED events, TRACES traces of at most RUNS_PER_TRACE runs each, DURATIONS run times per
agent. Texts are kept as previews of PREVIEW characters; nothing else of a run (no environment, no config) is
ever held, so nothing else can be shown.
"""

from __future__ import annotations

import asyncio
import contextlib
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
# Feed entries waiting for one live-stream client; more are skipped for it until it reads (it goes on from there).
CLIENT_QUEUE = 2000


def preview(text: Any, width: int = PREVIEW) -> str:
    line = " ".join(str(text or "").split())
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
        self.feed: deque[Message] = deque(maxlen=FEED)
        self._seq = itertools.count(1)
        self.durations: dict[str, deque[float]] = {}
        self.last_seen: dict[str, float] = {}
        # Failed outcomes per agent since the dashboard attached.
        self.failed: dict[str, int] = {}
        self.traces: OrderedDict[str, TraceView] = OrderedDict()
        self.clients: set[asyncio.Queue[Message | None]] = set()

    # -- events ---------------------------------------------------------------------------------------------
    def on_event(self, event: Message) -> None:
        kind = event.get("event")
        if kind == "subscribed" and isinstance(event.get("status"), dict):
            self.status = event["status"]
            self.connected = True
        elif kind == "disconnected":
            self.connected = False
        elif kind == "agent_state":
            self._agent_state(event)
        start, end = RunStart.of(event), RunEnd.of(event)  # read once, for the metrics and the trace
        self.metrics.observe(event, start, end)
        self._trace(event, start, end)
        agent = event.get("agent")
        if isinstance(agent, str):
            self.last_seen[agent] = stamp(event)
        if kind != "subscribed":
            self._publish(event)

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

    def _publish(self, event: Message) -> None:
        shown = feed_entry(event, next(self._seq))
        self.feed.append(shown)
        for queue in list(self.clients):
            with contextlib.suppress(asyncio.QueueFull):  # a client that lags skips entries (bounded by the queue)
                queue.put_nowait(shown)

    def _trace(self, event: Message, start: RunStart | None, end: RunEnd | None) -> None:
        kind = event.get("event")
        if start is not None:
            node = self._node(start.trace_id, start.id, start.agent, start.parent_id, start.started_at)
            if node is None:
                return
            node.status, node.attempt = "running", start.attempt
            node.prompt = node.prompt or preview(start.prompt)
            return
        if end is not None:
            if end.ok:
                self._count(end)
            else:
                self.failed[end.agent] = self.failed.get(end.agent, 0) + 1
            if end.ok and end.seconds is not None:
                self.durations.setdefault(end.agent, deque(maxlen=DURATIONS)).append(end.seconds)
            node = self._node(end.trace_id, end.id, end.agent, end.parent_id, end.started_at or end.ended_at)
            if node is None:
                return
            node.status = "ok" if end.ok else "failed"
            node.attempt, node.ended_at, node.error = end.attempt, end.ended_at, end.error
            node.seconds = end.seconds if end.seconds is not None else _since(node.started_at, end.ended_at)
            node.cost, node.tokens = end.cost, end.prompt_tokens + end.completion_tokens
            node.prompt = node.prompt or preview(end.prompt)
            node.content = preview(end.content or end.error)
            return
        if kind in (adapter.DEAD_LETTER_EVENT, adapter.RETRY_EVENT):
            trace_id, run_id = str(event.get("trace_id")), str(event.get("id"))
            node = self._node(trace_id, run_id, str(event.get("agent")), adapter.as_str(event.get("parent_id")))
            if node is not None:
                node.status = "dead" if kind == adapter.DEAD_LETTER_EVENT else "retrying"
                node.error = preview(event.get("reason") or event.get("error"))

    def _count(self, end: RunEnd) -> None:
        """Add a finished run to the status's totals until the next poll brings the supervisor's own."""
        totals = (self.status or {}).get("totals")
        if not isinstance(totals, dict):
            return
        entry = totals.setdefault(end.agent, {})
        entry["runs"] = (adapter.as_int(entry.get("runs")) or 0) + 1
        tokens = end.prompt_tokens + end.completion_tokens
        entry["total_tokens"] = (adapter.as_int(entry.get("total_tokens")) or 0) + tokens
        if end.cost is not None:
            entry["cost"] = (adapter.as_float(entry.get("cost")) or 0.0) + end.cost

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


SCALARS = (str, int, float, bool)
FEED_KEYS = ("agent", "id", "trace_id", "parent_id", "state", "trigger", "kind", "code", "attempt", "pid")


def feed_entry(event: Message, seq: int) -> Message:
    """An event as the feed shows it: its kind, agent, ids and a preview of its texts; no other field."""
    entry: Message = {"seq": seq, "ts": stamp(event), "event": str(event.get("event"))}
    for key in FEED_KEYS:
        value = event.get(key)
        if isinstance(value, SCALARS):
            entry[key] = value
    text = event.get("error") or event.get("reason") or event.get("content") or event.get("prompt")
    if text:
        entry["text"] = preview(text, 160)
    return entry


__all__ = ["DashboardState", "RunNode", "TraceView", "feed_entry", "percentile", "preview"]
