"""OpenTelemetry: the telemetry worker process, which turns run outcomes into OTLP spans and exports them over
OTLP/HTTP (protobuf) in batches.

`python -m llmling.observe.telemetry ENDPOINT SERVICE_NAME` reads lines of JSON arrays of events on stdin (the
event stream's batches, written by the supervisor's TelemetryService), keeps the time of each run's first
`run_started` until its outcome (REMEMBERED_STARTS at most), makes one span per outcome straight into the
protobuf of the export request (opentelemetry-proto's messages: ~25 µs a span, where the SDK's TracerProvider,
BatchSpanProcessor and exporter cost ~300 µs), and posts a request when EXPORT_S passed since the first span
waiting or MAX_BATCH spans wait. While a request is posted, stdin waits (a slow or absent collector makes the
supervisor's side drop batches, bounded there). At EOF (the supervisor stopped, or died: its end of the pipe
closes) it exports what is left and exits.

Ids are derived from llmling's: the trace id is the trace's 128-bit hex id; a run's span id is the first 64 bits
of the SHA-256 of its run id, so a downstream run's span names its parent's span by the parent's run id,
without any state shared between them.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import select
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans, Span, Status

from llmling.observe.runs import OUTCOME_EVENTS, RunEnd, stamp
from llmling.observe.scheduling import IDLE_ENV, become_idle, leave_idle

# Export when the oldest span waiting is this old (seconds), or when MAX_BATCH spans wait (one request each).
EXPORT_S = 1.0
MAX_BATCH = 512
# Seconds one export request may take; attempts per request (connection errors, 429 and 5xx are retried).
REQUEST_TIMEOUT_S = 10.0
ATTEMPTS = 2
RETRY_PAUSE_S = 0.5
RETRYABLE = frozenset({429, 502, 503, 504})
READ_SIZE = 1 << 20
# Runs started whose outcome was not seen yet, whose start time is kept; oldest dropped first.
REMEMBERED_STARTS = 10_000

log = logging.getLogger("llmling.telemetry")


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


class SpanBatch:
    """The spans waiting for one export request, made straight into its protobuf (one resource, one scope)."""

    def __init__(self, service_name: str) -> None:
        self.service_name = service_name
        self.count = 0
        # When the first span waiting was added (time.monotonic), or None when none waits.
        self.since: float | None = None
        self._request, self._spans = self._new()

    def _new(self) -> tuple[ExportTraceServiceRequest, Any]:
        request = ExportTraceServiceRequest()
        resource_spans = request.resource_spans.add()
        for key, value in (("service.name", self.service_name), ("telemetry.sdk.language", "python")):
            attribute = resource_spans.resource.attributes.add()
            attribute.key, attribute.value.string_value = key, value
        scope: ScopeSpans = resource_spans.scope_spans.add()
        scope.scope.name = "llmling"
        return request, scope.spans

    def add(self, run: RunEnd, started_at: float | None) -> None:
        """The span of one run: its outcome and when it started (a failed run's outcome has no duration: the time
        the supervisor saw its start; unknown: when it ended)."""
        started = run.started_at or started_at or run.ended_at
        parent_id = run.parent_id
        span: Span = self._spans.add()
        span.trace_id = trace_id_of(run.trace_id).to_bytes(16, "big")
        span.span_id = span_id_of(run.id).to_bytes(8, "big")
        if parent_id is not None:
            span.parent_span_id = span_id_of(parent_id).to_bytes(8, "big")
        span.name = f"invoke_agent {run.agent}"
        span.kind = Span.SPAN_KIND_INTERNAL
        span.start_time_unix_nano = int(started * 1e9)
        span.end_time_unix_nano = int(run.ended_at * 1e9)
        attributes = span.attributes
        for key, text in (
            ("gen_ai.operation.name", "invoke_agent"),
            ("gen_ai.agent.name", run.agent),
            ("llmling.run.id", run.id),
            ("llmling.trace_id", run.trace_id),
            ("llmling.outcome", run.outcome),
        ):
            attribute = attributes.add()
            attribute.key, attribute.value.string_value = key, text
        numbers = [
            ("gen_ai.usage.input_tokens", run.prompt_tokens),
            ("gen_ai.usage.output_tokens", run.completion_tokens),
            ("llmling.attempt", run.attempt),
        ]
        if run.hops is not None:
            numbers.append(("llmling.hops", run.hops))
        for key, number in numbers:
            attribute = attributes.add()
            attribute.key, attribute.value.int_value = key, number
        if run.cost is not None:
            attribute = attributes.add()
            attribute.key, attribute.value.double_value = "llmling.cost_usd", run.cost
        if not run.ok:
            span.status.code = Status.STATUS_CODE_ERROR
            span.status.message = (run.error or "")[:500]
        self.count += 1
        if self.since is None:
            self.since = time.monotonic()

    def take(self) -> bytes:
        """The export request of the spans waiting (serialised); the batch is empty after."""
        body = self._request.SerializeToString()
        self._request, self._spans = self._new()
        self.count, self.since = 0, None
        return body


class Exporter:
    """POSTs export requests to `<endpoint>/v1/traces` over one kept-alive HTTP connection."""

    def __init__(self, endpoint: str) -> None:
        url = urlsplit(f"{endpoint}/v1/traces")
        self._path = url.path
        connection = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        self._connection = connection(url.hostname or "127.0.0.1", url.port, timeout=REQUEST_TIMEOUT_S)
        self.exported = 0
        self.failed = 0

    def post(self, body: bytes, spans: int) -> None:
        """One export request; a request that fails after ATTEMPTS is logged and its spans counted failed."""
        problem = ""
        for attempt in range(ATTEMPTS):
            if attempt:
                time.sleep(RETRY_PAUSE_S)
            try:
                self._connection.request("POST", self._path, body, {"Content-Type": "application/x-protobuf"})
                response = self._connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as exc:
                self._connection.close()
                problem = str(exc) or type(exc).__name__
                continue
            if 200 <= response.status < 300:
                self.exported += spans
                return
            problem = f"HTTP {response.status}"
            if response.status not in RETRYABLE:
                break
        self.failed += spans
        log.error("export of %d spans to %s failed: %s", spans, self._path, problem)

    def close(self) -> None:
        self._connection.close()


class Worker:
    """Records in, spans out: reads stdin's lines as they come, exports when a batch is due."""

    def __init__(self, endpoint: str, service_name: str) -> None:
        self.batch = SpanBatch(service_name)
        self.exporter = Exporter(endpoint)
        # Invariant: run id → when its first start was seen, for runs without an outcome yet; at most
        # REMEMBERED_STARTS, oldest first (a dict keeps the order of insertion).
        self._started: dict[str, float] = {}

    def take_line(self, line: bytes) -> None:
        """One batch of events: a start's time is kept, an outcome becomes a span."""
        try:
            events = json.loads(line)
        except ValueError:
            return  # never from our supervisor; a line we cannot read is skipped
        for event in events if isinstance(events, list) else ():
            if not isinstance(event, dict):
                continue
            kind = event.get("event")
            if kind == "run_started":
                self._started_at(event)
            elif kind in OUTCOME_EVENTS and (run := RunEnd.of(event)) is not None:
                self.batch.add(run, self._started.pop(run.id, None))
                if self.batch.count >= MAX_BATCH:
                    self.export_due()

    def _started_at(self, event: dict[str, Any]) -> None:
        """Keep when a run first started (a redelivery keeps the first start)."""
        run_id = event.get("id")
        if isinstance(run_id, str) and run_id not in self._started:
            self._started[run_id] = stamp(event)
            if len(self._started) > REMEMBERED_STARTS:
                del self._started[next(iter(self._started))]

    def export_due(self, force: bool = False) -> None:
        since = self.batch.since
        if since is not None and (force or self.batch.count >= MAX_BATCH or time.monotonic() - since >= EXPORT_S):
            spans = self.batch.count
            self.exporter.post(self.batch.take(), spans)

    def wait_s(self) -> float | None:
        """Seconds until the batch waiting is due (None: nothing waits)."""
        since = self.batch.since
        return None if since is None else max(0.0, since + EXPORT_S - time.monotonic())

    def serve(self, fd: int) -> None:
        """Until EOF on `fd`."""
        pending = b""
        while True:
            readable, _, _ = select.select([fd], [], [], self.wait_s())
            if readable:
                data = os.read(fd, READ_SIZE)
                if not data:
                    return
                *lines, pending = (pending + data).split(b"\n")
                for line in lines:
                    self.take_line(line)
            self.export_due()

    def close(self) -> None:
        """Export what waits, then report what could not be exported."""
        self.export_due(force=True)
        self.exporter.close()
        if self.exporter.failed:
            log.warning("%d spans were not exported (%d exported)", self.exporter.failed, self.exporter.exported)


def main(argv: list[str]) -> int:
    """The worker: records from stdin until EOF, then the last export."""
    endpoint, service_name = argv
    logging.basicConfig(level=logging.WARNING, format="telemetry: %(message)s")
    worker = Worker(endpoint, service_name)
    if os.environ.get(IDLE_ENV):
        become_idle()
    try:
        worker.serve(sys.stdin.buffer.fileno())
    except KeyboardInterrupt:
        pass
    finally:
        leave_idle()  # the last export, at the stop, at the system's priority where allowed
        worker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


__all__ = ["Exporter", "SpanBatch", "Worker", "main", "span_id_of", "trace_id_of"]
