"""Prometheus `/metrics` served by the supervisor (`metrics:`) and OpenTelemetry spans (`telemetry:`) sent to a
local OTLP/HTTP receiver, both over a real system."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from llmling.testing import llmling_command
from tests._automation import free_port, wait_listening, wait_until
from tests.conftest import Systems

CHAIN = """
    {extra}
    agents:
      a: {{callback: 'cb:echo', connections: [b]}}
      b: {{callback: 'cb:upper'}}
      c: {{callback: 'cb:boom'}}
"""


def samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the endpoint: (name, sorted labels) → value, parsed by prometheus_client's parser."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_metrics_count_known_runs(systems: Systems) -> None:
    port = free_port()
    system = systems.start(CHAIN.format(extra=f"metrics: {{port: {port}}}"))
    wait_listening(port)
    for n in range(3):
        done = system.cli("send", "a", f"hi {n}", "--wait")
        assert done.returncode == 0, done.stderr
    for n in range(2):
        assert system.cli("send", "c", f"no {n}").returncode != 0

    def counted() -> dict[Any, float] | None:
        found = samples(port)
        return found if found.get(("llmling_runs_total", (("agent", "b"), ("outcome", "ok")))) == 3 else None

    found = wait_until(counted, 30, "b's three runs in /metrics")
    assert found[("llmling_runs_total", (("agent", "a"), ("outcome", "ok")))] == 3
    assert found[("llmling_runs_total", (("agent", "c"), ("outcome", "error")))] == 2
    assert ("llmling_runs_total", (("agent", "c"), ("outcome", "ok"))) not in found
    assert found[("llmling_run_seconds_count", (("agent", "a"),))] == 3
    assert found[("llmling_run_seconds_count", (("agent", "b"),))] == 3
    assert found[("llmling_hop_seconds_count", ())] == 3  # a → b, once per message
    assert found[("llmling_restarts_total", (("agent", "a"),))] == 0
    assert found[("llmling_tokens_total", (("agent", "a"), ("kind", "prompt")))] >= 0


def test_metrics_port_in_use_fails_the_start(systems: Systems) -> None:
    port = free_port()
    with socket.create_server(("127.0.0.1", port)):
        system = systems.make(CHAIN.format(extra=f"metrics: {{port: {port}}}"))
        assert system.run() == 1
    assert f"metrics: cannot listen on 127.0.0.1:{port}" in system.log_text()


class Receiver:
    """An OTLP/HTTP collector on 127.0.0.1 (aiohttp, on its own thread): decodes every export request."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[ExportTraceServiceRequest] = []
        # Export requests to answer 503 first, and how many were.
        self.refuse_first = 0
        self.refused = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    async def _export(self, request: web.Request) -> web.Response:
        if self.refused < self.refuse_first:  # a collector that is not ready: the export is retried
            self.refused += 1
            return web.Response(status=503)
        decoded = ExportTraceServiceRequest()
        decoded.ParseFromString(await request.read())
        self.requests.append(decoded)
        return web.Response(body=b"", content_type="application/x-protobuf")

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/v1/traces", self._export)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()

    def spans(self) -> list[Any]:
        return [
            span
            for request in list(self.requests)
            for resource in request.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        ]

    def __enter__(self) -> Receiver:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as server:
        yield server


def test_spans_of_a_chain(systems: Systems, receiver: Receiver) -> None:
    telemetry = f"telemetry: {{otlp_endpoint: 'http://127.0.0.1:{receiver.port}', service_name: chain}}"
    system = systems.start(CHAIN.format(extra=telemetry))
    done = system.cli("send", "a", "hello", "--wait", "--json")
    assert done.returncode == 0, done.stderr
    assert system.cli("send", "c", "fails").returncode != 0
    system.stop()  # the last batch is exported at the stop at the latest
    spans = wait_until(lambda: receiver.spans() if len(receiver.spans()) >= 3 else None, 30, "three spans")
    by_agent = {}
    for span in spans:
        attributes = {kv.key: kv.value for kv in span.attributes}
        by_agent[attributes["gen_ai.agent.name"].string_value] = (span, attributes)
    (a, a_attrs), (b, b_attrs), (c, c_attrs) = by_agent["a"], by_agent["b"], by_agent["c"]
    assert b_attrs["llmling.hops"].int_value == 1
    assert a.trace_id == b.trace_id, "one trace for a message and its downstream run"
    assert b.parent_span_id == a.span_id, "b's span is a child of a's"
    assert a.parent_span_id == b"", "a is the root"
    assert c.trace_id != a.trace_id
    assert a.name == "invoke_agent a"
    assert a_attrs["llmling.outcome"].string_value == "ok"
    assert a_attrs["llmling.attempt"].int_value == 1
    assert a_attrs["gen_ai.operation.name"].string_value == "invoke_agent"
    assert c_attrs["llmling.outcome"].string_value == "error"
    assert c.status.code == 2  # STATUS_CODE_ERROR
    assert b.start_time_unix_nano >= a.start_time_unix_nano
    assert b.end_time_unix_nano > b.start_time_unix_nano
    resource = {kv.key: kv.value.string_value for kv in receiver.requests[0].resource_spans[0].resource.attributes}
    assert resource["service.name"] == "chain"
    assert a.trace_id.hex() == json.loads(done.stdout)["trace_id"]


def test_a_run_that_ends_during_the_drain_has_its_span(systems: Systems, receiver: Receiver) -> None:
    """Telemetry stops after the agents: a run still running when the stop begins is exported when it ends."""
    config = (
        "agents:\n  s:\n    callback: cb:slow\n    env_passthrough: [SLOW_SECONDS]\n"
        f"telemetry: {{otlp_endpoint: 'http://127.0.0.1:{receiver.port}'}}\n"
    )
    system = systems.start(config, env={"SLOW_SECONDS": "4"})  # long enough to be seen running
    command = [*llmling_command(), "send", "s", "finish me", "--socket", str(system.socket)]
    sender = subprocess.Popen(command, env=system.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def running() -> bool:
        return any(agent.get("running") for agent in system.status()["agents"])

    wait_until(running, 30, "the run to start")
    assert system.stop() == 0
    out, err = sender.communicate(timeout=60)
    assert sender.returncode == 0 and "late" in out, err
    spans = wait_until(lambda: receiver.spans() or None, 30, "the drained run's span")
    attributes = {kv.key: kv.value for kv in spans[0].attributes}
    assert attributes["gen_ai.agent.name"].string_value == "s"
    assert attributes["llmling.outcome"].string_value == "ok"


def test_packages_imported_only_when_on() -> None:
    probe = (
        "import sys\n"
        "from llmling.supervisor.system import Supervisor\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('opentelemetry', 'prometheus_client')))\n"
        "print(','.join(loaded))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == ""


def test_worker_retries_a_refused_export_and_times_a_failed_run_from_its_start(receiver: Receiver) -> None:
    """The telemetry worker alone (a real process fed on stdin, as the supervisor does): the collector's first
    answer is 503, the request is retried; a failed run's span starts when the supervisor saw its first start
    (a redelivery's start does not move it); events of other kinds are passed over."""
    receiver.refuse_first = 1
    now = time.time()
    ok = {"event": "run_finished", "agent": "a", "id": "r1", "trace_id": "ab" * 16, "elapsed_total": 0.25}
    ok["ts"] = now
    ids = {"agent": "b", "id": "r2", "trace_id": "ab" * 16, "parent_id": "r1"}
    started = [{"event": "run_started", **ids, "attempt": n, "ts": now + 0.5 * n} for n in (1, 2)]
    failed = {"event": "run_failed", **ids, "kind": "timeout", "error": "no reply", "ts": now + 1.0}
    batches = [[ok, {"event": "agent_state", "agent": "a", "state": "busy"}, started[0]], [started[1], failed]]
    worker = subprocess.run(
        [sys.executable, "-m", "llmling.observe.telemetry", f"http://127.0.0.1:{receiver.port}", "svc"],
        input=b"".join(json.dumps(batch).encode() + b"\n" for batch in batches),
        capture_output=True,
        timeout=60,
    )
    assert worker.returncode == 0, worker.stderr
    assert receiver.refused == 1
    spans = {span.name: span for span in receiver.spans()}
    assert set(spans) == {"invoke_agent a", "invoke_agent b"}
    a, b = spans["invoke_agent a"], spans["invoke_agent b"]
    assert b.parent_span_id == a.span_id and b.trace_id == a.trace_id == bytes.fromhex("ab" * 16)
    assert b.status.code == 2 and b.status.message == "no reply"
    assert b.start_time_unix_nano == int((now + 0.5) * 1e9) and b.end_time_unix_nano == int((now + 1.0) * 1e9)
    assert a.end_time_unix_nano - a.start_time_unix_nano == pytest.approx(0.25e9, rel=1e-6)
