"""`telemetry: {otlp_endpoint, service_name}`: run outcomes go to the telemetry worker process, which makes the
OpenTelemetry spans and exports them (llmling/observe/telemetry.py).

On the supervisor's side a run costs one small JSON line appended to a buffer; the buffer is written to the
worker's stdin once per BATCH_S (one write for many runs), never between a reply and its forward. The worker
exits at EOF of its stdin, so it ends with the supervisor even when the supervisor is SIGKILLed; it also has a
parent-death signal. Neither the supervisor nor the CLI imports OpenTelemetry.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from loguru import logger

from llmling.config.observe import TelemetryConfig
from llmling.observe.records import RunRecord
from llmling.observe.runs import RunEnd, RunStart
from llmling.supervisor.environment import base_environment

if TYPE_CHECKING:
    from llmling.supervisor.system import Supervisor

Message = dict[str, Any]
# Seconds records wait in the buffer before one write to the worker.
BATCH_S = 0.05
# Runs started and not finished whose start is kept (for the span of a failed run); oldest dropped first.
REMEMBERED_STARTS = 10_000
# Bytes the worker may have unread before records are dropped (and counted): a stuck worker never grows us.
MAX_UNREAD = 8 << 20
# Seconds the worker gets at stop to export what is left before it is killed.
STOP_GRACE = 10.0


def _die_with_parent() -> None:
    from llmling.agent_proc.death import die_with_parent

    die_with_parent()


class TelemetryService:
    name = "telemetry"

    def __init__(self, supervisor: Supervisor, config: TelemetryConfig) -> None:
        self.endpoint = config.otlp_endpoint
        self.service_name = config.service_name or supervisor.config.name
        self.log = logger.bind(agent="telemetry")
        self._process: asyncio.subprocess.Process | None = None
        # Invariant: lines not yet written to the worker; a flush is scheduled whenever it is not empty.
        self._buffer: list[bytes] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._starts: OrderedDict[str, RunStart] = OrderedDict()
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
            preexec_fn=_die_with_parent,
            env=base_environment(),  # the allow-list: no secret of the supervisor's environment
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
        if self._process is None:
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
        if end is None:
            return
        record = RunRecord.of(end, self._starts.pop(end.id, None))
        self._buffer.append(json.dumps(record.to_json(), separators=(",", ":")).encode() + b"\n")
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(BATCH_S, self._flush, self._process)

    def _flush(self, process: asyncio.subprocess.Process) -> None:
        self._flush_handle = None
        lines, self._buffer = self._buffer, []
        stdin = process.stdin
        if not lines or stdin is None or stdin.is_closing():
            return
        if stdin.transport.get_write_buffer_size() > MAX_UNREAD:
            self.dropped += len(lines)
            return
        stdin.write(b"".join(lines))


__all__ = ["TelemetryService"]
