"""Prometheus metrics of a system, built from its events (a listener) and its status (read at scrape time).

`Metrics.observe(event)` is called for every supervisor event: in the supervisor (`metrics: {port}`), or in a
dashboard from the event stream. It only adds to plain counters in memory (dicts and lists: ~1 µs an update,
where prometheus-client's metric objects take a lock and a label lookup each, ~5 µs); a collector turns them
into metric families when `/metrics` is scraped, never on a run's path. Gauges of the agents' load and restarts
come from a status (the supervisor's own, or the dashboard's last poll) read at scrape time.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from llmling.observe import adapter
from llmling.observe.runs import RUN_EVENTS, RunEnd, RunStart, stamp

Message = dict[str, Any]
StatusSource = Callable[[], Message | None]
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Runs remembered to time the hop to their downstream runs and to match a retried dead letter; oldest first out.
REMEMBERED_RUNS = 10_000
RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
HOP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)


class Histogram:
    """Observations counted per bucket (not cumulated: that is done when scraped) and summed."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        # Invariant: counts[i] holds the observations in (bounds[i-1], bounds[i]]; the last one those above all.
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative buckets as Prometheus wants them, "+Inf" last."""
        out, total = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append((floatToGoString(bound), total))
        return out


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


class _Counts(Collector):
    """The event counts of a Metrics, as metric families (built at scrape time)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        runs = CounterMetricFamily("llmling_runs", "Runs by outcome", labels=["agent", "outcome"])
        for labels, count in m.runs.items():
            runs.add_metric(labels, count)
        seconds = HistogramMetricFamily("llmling_run_seconds", "Run time seen by the supervisor", labels=["agent"])
        for agent, histogram in m.run_seconds.items():
            seconds.add_metric([agent], histogram.buckets(), histogram.sum)
        tokens = CounterMetricFamily("llmling_tokens", "Model tokens used", labels=["agent", "kind"])
        for labels, count in m.tokens.items():
            tokens.add_metric(labels, count)
        cost = CounterMetricFamily("llmling_cost_usd", "Model cost in USD", labels=["agent"])
        for agent, usd in m.cost.items():
            cost.add_metric([agent], usd)
        dead = GaugeMetricFamily("llmling_dead_letters", "Dead letters not retried", labels=["agent"])
        for agent, count in m.dead_letters.items():
            dead.add_metric([agent], count)
        webhook = CounterMetricFamily(
            "llmling_webhook_requests", "Webhook requests by answer", labels=["trigger", "code"]
        )
        for labels, count in m.webhook_requests.items():
            webhook.add_metric(labels, count)
        hop = HistogramMetricFamily(
            "llmling_hop_seconds", "From a run's reply to the start of a downstream run it caused"
        )
        hop.add_metric([], m.hop_seconds.buckets(), m.hop_seconds.sum)
        dropped = CounterMetricFamily(
            "llmling_events_dropped", "Events the event stream dropped for this reader (too slow)", value=m.dropped
        )
        yield from (runs, seconds, tokens, cost, dead, webhook, hop, dropped)


class Metrics:
    """The metrics of one system. Not thread-safe by design: fed from the event loop only, and read by the
    collectors at scrape time on that loop."""

    def __init__(self, status: StatusSource) -> None:
        # Counts by label values (the order of each metric's labels), only ever increased (dead letters: a gauge).
        self.runs: dict[tuple[str, str], int] = {}  # (agent, outcome)
        self.run_seconds: dict[str, Histogram] = {}  # agent → successful runs' durations
        self.tokens: dict[tuple[str, str], int] = {}  # (agent, "prompt" | "completion")
        self.cost: dict[str, float] = {}  # agent → USD
        self.dead_letters: dict[str, int] = {}  # agent → dead letters seen and not retried
        self.webhook_requests: dict[tuple[str, str], int] = {}  # (trigger, code)
        self.hop_seconds = Histogram(HOP_BUCKETS)
        self.dropped = 0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Counts(self))
        self.registry.register(_StatusCollector(status))
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
            self._undead(end.id)  # its start may not come: a batch of the event stream leaves a fast run's out
            self._run_end(end)
        elif start is not None:
            self._undead(start.id)
        elif kind == adapter.DEAD_LETTER_EVENT:
            agent, run_id = str(event.get("agent")), str(event.get("id"))
            if run_id not in self._dead:
                self.dead_letters[agent] = self.dead_letters.get(agent, 0) + 1
                _remember(self._dead, run_id, agent)
        elif kind == "dropped":  # only a reader of the event stream gets these: its counts are short by that
            self.dropped += adapter.as_int(event.get("count")) or 0
        elif kind == adapter.RETRY_EVENT:
            _add(self.runs, (str(event.get("agent")), "retry"), 1)
        elif kind == "trigger_fired" and event.get("kind") == "webhook":
            _add(self.webhook_requests, (str(event.get("trigger")), "202"), 1)
        elif kind == "webhook_rejected":
            _add(self.webhook_requests, (str(event.get("trigger") or ""), str(event.get("code"))), 1)

    def _undead(self, run_id: str) -> None:
        """A retried dead letter is delivered again: it is no longer one."""
        if run_id in self._dead:
            agent = self._dead.pop(run_id)
            self.dead_letters[agent] = self.dead_letters.get(agent, 0) - 1

    def _run_end(self, end: RunEnd) -> None:
        agent = end.agent
        _add(self.runs, (agent, end.outcome), 1)
        if not end.ok:
            return
        if end.seconds is not None:
            histogram = self.run_seconds.get(agent)
            if histogram is None:
                histogram = self.run_seconds[agent] = Histogram(RUN_BUCKETS)
            histogram.observe(end.seconds)
        _add(self.tokens, (agent, "prompt"), end.prompt_tokens)
        _add(self.tokens, (agent, "completion"), end.completion_tokens)
        if end.cost is not None:
            self.cost[agent] = self.cost.get(agent, 0.0) + end.cost
        parent_done = self._finished.get(end.parent_id) if end.parent_id else None
        if parent_done is not None and end.started_at is not None:
            self.hop_seconds.observe(max(0.0, end.started_at - parent_done))
        _remember(self._finished, end.id, end.ended_at)

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)


def _add(counts: dict[Any, Any], key: Any, amount: float) -> None:
    counts[key] = counts.get(key, 0) + amount


def _remember(store: OrderedDict[str, Any], key: str, value: Any) -> None:
    store[key] = value
    if len(store) > REMEMBERED_RUNS:
        store.popitem(last=False)


__all__ = ["CONTENT_TYPE", "Histogram", "Metrics", "stamp"]
