"""OpenTelemetry: the telemetry worker process, which turns run records into spans and exports them over
OTLP/HTTP with a BatchSpanProcessor.

`python -m llmling.observe.telemetry ENDPOINT SERVICE_NAME` reads lines of JSON arrays of run events on stdin
(their run fields, written by the supervisor's TelemetryService), makes one span per run outcome and hands it to
the batch processor, whose thread exports it. At EOF (the supervisor stopped, or died: its end of the pipe
closes) it exports what is left and exits. The SDK's cost (~0.1 ms to make a span, more to encode it) is paid
here, on another core, never in the supervisor's loop.

Ids are derived from llmling's: the trace id is the trace's 128-bit hex id; a run's span id is the first 64 bits
of the SHA-256 of its run id, so a downstream run's span names its parent's span by the parent's run id,
without any state shared between them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
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
from llmling.observe.scheduling import IDLE_ENV, become_idle, leave_idle

# Runs started and not finished whose start is kept; oldest dropped first.
REMEMBERED_STARTS = 10_000
# Milliseconds the export of the last spans may take at the end.
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


class SpanWriter:
    """Run records → spans, through one TracerProvider with a BatchSpanProcessor and the OTLP/HTTP exporter."""

    def __init__(self, endpoint: str, service_name: str) -> None:
        self._ids = _RunIds()
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": service_name}), id_generator=self._ids
        )
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces")))
        self._tracer = self.provider.get_tracer("llmling")

    def write(self, run: RunEnd, start: RunStart | None) -> None:
        """The span of one run: its outcome and, for a failed run (no duration), its start."""
        started = run.started_at or (start.started_at if start else run.ended_at)
        parent_id = run.parent_id or (start.parent_id if start else None)
        trace_id = trace_id_of(run.trace_id)
        context = None
        if parent_id is not None:
            parent = SpanContext(trace_id, span_id_of(parent_id), is_remote=True, trace_flags=TraceFlags(1))
            context = trace.set_span_in_context(NonRecordingSpan(parent))
        self._ids.trace_id, self._ids.span_id = trace_id, span_id_of(run.id)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": run.agent,
            "gen_ai.usage.input_tokens": run.prompt_tokens,
            "gen_ai.usage.output_tokens": run.completion_tokens,
            "llmling.run.id": run.id,
            "llmling.trace_id": run.trace_id,
            "llmling.attempt": run.attempt,
            "llmling.outcome": run.outcome,
        }
        if run.cost is not None:
            attributes["llmling.cost_usd"] = run.cost
        if run.hops is not None:
            attributes["llmling.hops"] = run.hops
        span = self._tracer.start_span(
            f"invoke_agent {run.agent}",
            context=context,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            start_time=int(started * 1e9),
        )
        if not run.ok:
            span.set_status(Status(StatusCode.ERROR, (run.error or "")[:500]))
        span.end(end_time=int(run.ended_at * 1e9))

    def close(self) -> None:
        self.provider.force_flush(FLUSH_TIMEOUT_MS)
        self.provider.shutdown()


class Runs:
    """Pairs each outcome with its start (a failed run's outcome carries no duration). Invariant: at most
    REMEMBERED_STARTS starts are kept, the oldest dropped first."""

    def __init__(self) -> None:
        self._starts: OrderedDict[str, RunStart] = OrderedDict()

    def pair(self, event: dict[str, Any]) -> tuple[RunEnd, RunStart | None] | None:
        start = RunStart.of(event)
        if start is not None:
            if start.id not in self._starts:  # a redelivery keeps the first start
                self._starts[start.id] = start
                if len(self._starts) > REMEMBERED_STARTS:
                    self._starts.popitem(last=False)
            return None
        end = RunEnd.of(event)
        return None if end is None else (end, self._starts.pop(end.id, None))


def main(argv: list[str]) -> int:
    """The worker: records from stdin until EOF, then the last export."""
    endpoint, service_name = argv
    # The exporter logs each failed attempt; a collector that is down is reported once per failed batch.
    logging.basicConfig(level=logging.ERROR, format="telemetry: %(message)s")
    writer = SpanWriter(endpoint, service_name)
    runs = Runs()
    if os.environ.get(IDLE_ENV):
        become_idle()
    try:
        for line in sys.stdin.buffer:
            try:
                events = json.loads(line)
            except ValueError:
                continue  # never from our supervisor; a line we cannot read is skipped
            for event in events if isinstance(events, list) else ():
                paired = runs.pair(event) if isinstance(event, dict) else None
                if paired is not None:
                    writer.write(*paired)
    except KeyboardInterrupt:
        pass
    finally:
        leave_idle()  # the last export, at the stop, at the system's priority where allowed
        writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


__all__ = ["Runs", "SpanWriter", "main", "span_id_of", "trace_id_of"]
