"""`telemetry: {otlp_endpoint, service_name}`: run outcomes go to the telemetry worker process, which makes the
OpenTelemetry spans and exports them (llmling/observe/telemetry.py).

On the supervisor's side it is a reader of the event stream (supervisor/events.py `add_reader`): it writes each
batch the stream makes (every FLUSH_S, or at an event that is not a run event) to the worker's stdin as one line,
the very bytes the dashboard's subscription gets, so telemetry adds no encoding to the supervisor (with a
dashboard open) or one per batch (without). Picking the outcomes, matching them with their starts and turning
them into spans is the worker's work. The worker exits at EOF of its stdin, so it ends with the supervisor even
when the supervisor is SIGKILLed; it also has a parent-death signal.
Neither the supervisor nor the CLI imports OpenTelemetry.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING

from loguru import logger

from llmling.config.observe import TelemetryConfig
from llmling.supervisor.environment import base_environment
from llmling.supervisor.helpers import IDLE_ENV, prepare_helper

if TYPE_CHECKING:
    from llmling.supervisor.system import Supervisor

# Bytes the worker may have unread before batches are dropped (their events counted): a stuck worker never
# grows us.
MAX_UNREAD = 8 << 20
# Seconds the worker gets at stop to export what is left before it is killed.
STOP_GRACE = 10.0


class TelemetryService:
    name = "telemetry"

    def __init__(self, supervisor: Supervisor, config: TelemetryConfig) -> None:
        self.endpoint = config.otlp_endpoint
        self.service_name = config.service_name or supervisor.config.name
        self.log = logger.bind(agent="telemetry")
        self._events = supervisor.events
        self._process: asyncio.subprocess.Process | None = None
        # Events not handed to the worker (it fell MAX_UNREAD bytes behind).
        self.dropped = 0
        supervisor.events.add_reader(self)

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
        """Hand the worker the events waiting in the stream, close its stdin (it exports the rest and exits),
        wait for it."""
        self._events.flush()
        process, self._process = self._process, None
        if process is None:
            return
        assert process.stdin is not None
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), STOP_GRACE)
        except TimeoutError:
            self.log.warning("the telemetry worker did not finish its export in {} s; killing it", STOP_GRACE)
            process.kill()
            await process.wait()
        if self.dropped:
            self.log.warning("{} events were not given to the telemetry worker (it fell behind)", self.dropped)

    def take(self, body: bytes, count: int) -> None:
        """One batch of the event stream (a JSON list of `count` events): one line, one write."""
        process = self._process
        stdin = process.stdin if process is not None else None
        if stdin is None or stdin.is_closing():
            return
        if stdin.transport.get_write_buffer_size() > MAX_UNREAD:
            self.dropped += count
            return
        stdin.write(body + b"\n")


__all__ = ["TelemetryService"]
