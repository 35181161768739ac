"""Prometheus metrics of a system, built from its events (a listener) and its status (read at scrape time).

`Metrics.observe(event)` is called for every supervisor event: in the supervisor (`metrics: {port}`), or in a
dashboard from the event stream. It only updates counters and histograms in memory; the exposition is built
when `/metrics` is scraped, never on a run's path. Gauges of the agents' load and restarts come from a status
(the supervisor's own, or the dashboard's last poll) read at scrape time.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from llmling.observe import adapter
from llmling.observe.runs import RUN_EVENTS, RunEnd, RunStart, stamp

Message = dict[str, Any]
StatusSource = Callable[[], Message | None]
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Runs remembered to time the hop to their downstream runs and to match a retried dead letter; oldest first out.
REMEMBERED_RUNS = 10_000
RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
HOP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)


class _StatusCollector(Collector):
    """Queue depth, runs in flight and restarts per agent, from a status read at scrape time."""

    def __init__(self, status: StatusSource) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        queue = GaugeMetricFamily("llmling_queue_depth", "Runs waiting for the agent", labels=["agent"])
        inflight = GaugeMetricFamily("llmling_inflight", "Runs in the agent's process now", labels=["agent"])
        restarts = CounterMetricFamily("llmling_restarts", "Restarts of the agent's process", labels=["agent"])
        status = self._status() or {}
        for entry in status.get("agents") or ():
            name = str(entry.get("name"))
            load = adapter.Load.of(entry)
            if load.queued is not None:
                queue.add_metric([name], load.queued)
            if load.running is not None:
                inflight.add_metric([name], load.running)
            restarts.add_metric([name], adapter.as_int(entry.get("restarts")) or 0)
        yield queue
        yield inflight
        yield restarts


class Metrics:
    """The registry of one system's metrics. Not thread-safe by design: fed from the event loop only."""

    def __init__(self, status: StatusSource) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.runs = Counter("llmling_runs", "Runs by outcome", ["agent", "outcome"], registry=r)
        self.run_seconds = Histogram(
            "llmling_run_seconds", "Run time seen by the supervisor", ["agent"], buckets=RUN_BUCKETS, registry=r
        )
        self.tokens = Counter("llmling_tokens", "Model tokens used", ["agent", "kind"], registry=r)
        self.cost = Counter("llmling_cost_usd", "Model cost in USD", ["agent"], registry=r)
        self.dead_letters = Gauge("llmling_dead_letters", "Dead letters not retried", ["agent"], registry=r)
        self.webhook_requests = Counter(
            "llmling_webhook_requests",
            "Webhook requests by answer",
            ["trigger", "code"],
            registry=r,
        )
        self.hop_seconds = Histogram(
            "llmling_hop_seconds",
            "From a run's reply to the start of a downstream run it caused",
            buckets=HOP_BUCKETS,
            registry=r,
        )
        self.dropped = Counter(
            "llmling_events_dropped", "Events the event stream dropped for this reader (too slow)", registry=r
        )
        r.register(_StatusCollector(status))
        # Invariant: at most REMEMBERED_RUNS entries each, oldest dropped first.
        self._finished: OrderedDict[str, float] = OrderedDict()  # run id → when its reply was reported
        self._dead: OrderedDict[str, str] = OrderedDict()  # dead letter's run id → agent

    def observe(self, event: Message, start: RunStart | None = None, end: RunEnd | None = None) -> None:
        """Account one event (`start`/`end`: its typed view when the caller has read it already). Never raises
        for a malformed event (fields read as unknown)."""
        kind = event.get("event")
        if end is None and start is None and kind in RUN_EVENTS:
            start, end = RunStart.of(event), RunEnd.of(event)
        if end is not None:
            self._run_end(end)
        elif start is not None:
            if start.id in self._dead:  # a retried dead letter is delivered again
                self.dead_letters.labels(self._dead.pop(start.id)).dec()
        elif kind == adapter.DEAD_LETTER_EVENT:
            agent, run_id = str(event.get("agent")), str(event.get("id"))
            if run_id not in self._dead:
                self.dead_letters.labels(agent).inc()
                _remember(self._dead, run_id, agent)
        elif kind == "dropped":  # only a reader of the event stream gets these: its counts are short by that
            self.dropped.inc(adapter.as_int(event.get("count")) or 0)
        elif kind == adapter.RETRY_EVENT:
            self.runs.labels(str(event.get("agent")), "retry").inc()
        elif kind == "trigger_fired" and event.get("kind") == "webhook":
            self.webhook_requests.labels(str(event.get("trigger")), "202").inc()
        elif kind == "webhook_rejected":
            self.webhook_requests.labels(str(event.get("trigger") or ""), str(event.get("code"))).inc()

    def _run_end(self, end: RunEnd) -> None:
        self.runs.labels(end.agent, end.outcome).inc()
        if not end.ok:
            return
        if end.seconds is not None:
            self.run_seconds.labels(end.agent).observe(end.seconds)
        self.tokens.labels(end.agent, "prompt").inc(end.prompt_tokens)
        self.tokens.labels(end.agent, "completion").inc(end.completion_tokens)
        if end.cost is not None:
            self.cost.labels(end.agent).inc(end.cost)
        parent_done = self._finished.get(end.parent_id) if end.parent_id else None
        if parent_done is not None and end.started_at is not None:
            self.hop_seconds.observe(max(0.0, end.started_at - parent_done))
        _remember(self._finished, end.id, end.ended_at)

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)


def _remember(store: OrderedDict[str, Any], key: str, value: Any) -> None:
    store[key] = value
    if len(store) > REMEMBERED_RUNS:
        store.popitem(last=False)


__all__ = ["CONTENT_TYPE", "Metrics", "stamp"]
