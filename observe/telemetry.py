"""OpenTelemetry: one span per run, exported over OTLP/HTTP by a BatchSpanProcessor (its own thread).

Built from supervisor events, off the hop path: a run's span is made when its outcome is reported (its start is
the outcome's time minus the run's duration), handed to the batch processor's queue, and exported later by the
processor's thread. Ids are derived from llmling's: the trace id is the trace's 128-bit hex id; a run's span id
is the first 64 bits of the SHA-256 of its run id, so a downstream run's span names its parent's span by the
parent's run id, without any state shared between them. Imported only when `telemetry:` is set.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from llmling.observe.runs import RunEnd, RunStart

Message = dict[str, Any]
# Runs started and not finished whose start time is kept (for the span of a failed run); oldest dropped first.
REMEMBERED_STARTS = 10_000
# Seconds the export of the last spans may take at stop.
FLUSH_TIMEOUT_MS = 5_000


def trace_id_of(llmling_trace_id: str) -> int:
    """The OpenTelemetry trace id of an llmling trace: its 32 hex digits, else a hash of it (never 0)."""
    try:
        value = int(llmling_trace_id, 16) if len(llmling_trace_id) == 32 else 0
    except ValueError:
        value = 0
    return value or int.from_bytes(hashlib.sha256(llmling_trace_id.encode()).digest()[:16], "big") or 1


def span_id_of(run_id: str) -> int:
    """The span id of a run: 64 bits of the SHA-256 of its run id (never 0)."""
    return int.from_bytes(hashlib.sha256(run_id.encode()).digest()[:8], "big") or 1


class _RunIds(IdGenerator):
    """Hands the SDK the ids of the span being made. Invariant: set just before each `start_span`, on the
    event loop's thread (the only one that makes spans)."""

    def __init__(self) -> None:
        self.span_id = 1
        self.trace_id = 1

    def generate_span_id(self) -> int:
        return self.span_id

    def generate_trace_id(self) -> int:
        return self.trace_id


class Telemetry:
    """A supervisor listener and Service: runs become spans; `stop()` exports what is left."""

    name = "telemetry"

    def __init__(self, endpoint: str, service_name: str) -> None:
        self.endpoint = f"{endpoint}/v1/traces"
        self.service_name = service_name
        self._ids = _RunIds()
        self._provider: TracerProvider | None = None
        self._tracer: trace.Tracer | None = None
        self._starts: OrderedDict[str, RunStart] = OrderedDict()

    async def start(self) -> None:
        # Made here, after the forkserver started: the processor's thread is never forked into an agent.
        provider = TracerProvider(
            resource=Resource.create({"service.name": self.service_name}), id_generator=self._ids
        )
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=self.endpoint)))
        self._provider = provider
        self._tracer = provider.get_tracer("llmling")

    async def stop(self) -> None:
        """Export the spans still queued (bounded by FLUSH_TIMEOUT_MS), then stop the processor's thread."""
        provider, self._provider, self._tracer = self._provider, None, None
        if provider is not None:
            await asyncio.to_thread(provider.force_flush, FLUSH_TIMEOUT_MS)
            await asyncio.to_thread(provider.shutdown)

    def on_event(self, event: Message) -> None:
        if self._tracer is None:
            return
        kind = event.get("event")
        if kind == "run_started":
            start = RunStart.of(event)
            if start is not None and start.id not in self._starts:  # a redelivery keeps the first start
                self._starts[start.id] = start
                if len(self._starts) > REMEMBERED_STARTS:
                    self._starts.popitem(last=False)
            return
        end = RunEnd.of(event)
        if end is not None:
            self._span(end, self._starts.pop(end.id, None))

    def _span(self, end: RunEnd, start: RunStart | None) -> None:
        assert self._tracer is not None
        started = end.started_at or (start.started_at if start else end.ended_at)
        parent_id = end.parent_id or (start.parent_id if start else None)
        trace_id = trace_id_of(end.trace_id)
        context = None
        if parent_id is not None:
            parent = SpanContext(trace_id, span_id_of(parent_id), is_remote=True, trace_flags=TraceFlags(1))
            context = trace.set_span_in_context(NonRecordingSpan(parent))
        self._ids.trace_id, self._ids.span_id = trace_id, span_id_of(end.id)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": end.agent,
            "gen_ai.usage.input_tokens": end.prompt_tokens,
            "gen_ai.usage.output_tokens": end.completion_tokens,
            "llmling.run.id": end.id,
            "llmling.trace_id": end.trace_id,
            "llmling.attempt": end.attempt,
            "llmling.outcome": end.outcome,
        }
        if end.cost is not None:
            attributes["llmling.cost_usd"] = end.cost
        if end.hops is not None:
            attributes["llmling.hops"] = end.hops
        span = self._tracer.start_span(
            f"invoke_agent {end.agent}",
            context=context,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            start_time=int(started * 1e9),
        )
        if not end.ok:
            span.set_status(Status(StatusCode.ERROR, end.error))
        span.end(end_time=int(end.ended_at * 1e9))


__all__ = ["Telemetry", "span_id_of", "trace_id_of"]
