"""`telemetry: {otlp_endpoint, service_name}`: run outcomes go to the telemetry worker process, which makes the
OpenTelemetry spans and exports them (llmling/observe/telemetry.py).

On the supervisor's side a run's start costs its time kept by run id, its outcome a tuple of references appended
to a buffer (~1 µs each); the buffer is encoded (one JSON array of records, `observe/runs.py` RECORD_FIELDS: the
outcome's fields and the start's time) and written to the worker's stdin once per BATCH_S (one write for many
runs), never between a reply and its forward. Turning events into typed runs and
spans is the worker's work. The worker exits at EOF of its stdin, so it ends with the supervisor even when the
supervisor is SIGKILLed; it also has a parent-death signal.
Neither the supervisor nor the CLI imports OpenTelemetry.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from loguru import logger

from llmling.config.observe import TelemetryConfig
from llmling.observe.runs import OUTCOME_EVENTS, record_of
from llmling.supervisor.environment import base_environment
from llmling.supervisor.helpers import IDLE_ENV, prepare_helper

if TYPE_CHECKING:
    from llmling.supervisor.system import Supervisor

Message = dict[str, Any]
# Seconds records wait in the buffer before one write to the worker.
BATCH_S = 0.1
# Bytes the worker may have unread before records are dropped (and counted): a stuck worker never grows us.
MAX_UNREAD = 8 << 20
# Runs started whose outcome was not seen yet, whose start time is kept; oldest dropped first.
REMEMBERED_STARTS = 10_000
# Seconds the worker gets at stop to export what is left before it is killed.
STOP_GRACE = 10.0


class TelemetryService:
    name = "telemetry"

    def __init__(self, supervisor: Supervisor, config: TelemetryConfig) -> None:
        self.endpoint = config.otlp_endpoint
        self.service_name = config.service_name or supervisor.config.name
        self.log = logger.bind(agent="telemetry")
        self._process: asyncio.subprocess.Process | None = None
        # Invariant: lines not yet written to the worker; a flush is scheduled whenever it is not empty.
        self._buffer: list[tuple[Any, ...]] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        # Invariant: run id → when its first start was seen, for runs without an outcome yet; at most
        # REMEMBERED_STARTS, oldest first (a dict keeps the order of insertion).
        self._started: dict[str, float] = {}
        self.dropped = 0
        supervisor.add_listener(self.on_event)

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "llmling.observe.telemetry",
            self.endpoint,
            self.service_name,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            preexec_fn=prepare_helper,
            env=base_environment() | {IDLE_ENV: "1"},  # the allow-list: no secret of the supervisor's environment
        )

    async def stop(self) -> None:
        """Write what is buffered, close the worker's stdin (it exports the rest and exits), wait for it."""
        process, self._process = self._process, None
        if process is None:
            return
        self._flush(process)
        assert process.stdin is not None
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), STOP_GRACE)
        except TimeoutError:
            self.log.warning("the telemetry worker did not finish its export in {} s; killing it", STOP_GRACE)
            process.kill()
            await process.wait()
        if self.dropped:
            self.log.warning("{} runs were not exported (the telemetry worker fell behind)", self.dropped)

    def on_event(self, event: Message) -> None:
        """A start: keep its time. An outcome: keep its record (references only: ~1 µs), encoded at the flush."""
        kind = event.get("event")
        if self._process is None:
            return
        if kind == "run_started":
            run_id = event.get("id")
            if isinstance(run_id, str) and run_id not in self._started:  # a redelivery keeps the first start
                self._started[run_id] = time.time()
                if len(self._started) > REMEMBERED_STARTS:
                    del self._started[next(iter(self._started))]
            return
        if kind not in OUTCOME_EVENTS:
            return
        self._buffer.append(record_of(event, time.time(), self._started.pop(event.get("id"), None)))
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(BATCH_S, self._flush, self._process)

    def _flush(self, process: asyncio.subprocess.Process) -> None:
        """One line (a JSON array of the buffered run records) in one write."""
        self._flush_handle = None
        batch, self._buffer = self._buffer, []
        stdin = process.stdin
        if not batch or stdin is None or stdin.is_closing():
            return
        if stdin.transport.get_write_buffer_size() > MAX_UNREAD:
            self.dropped += len(batch)
            return
        stdin.write(json.dumps(batch, separators=(",", ":"), default=str).encode() + b"\n")


__all__ = ["TelemetryService"]
