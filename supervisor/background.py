"""Background runs: the supervisor repeats one prompt for an agent on a timer.

Started from YAML (`background:` of an agent, once the system is up), from the CLI (`llmling background
start`), from Python (`await agent.run_in_background(...)`) or with a `background_start` request. The timer
lives in the supervisor, so an agent whose process restarts keeps its schedule (a run due meanwhile waits
for the new process to be READY).

Schedule: the first run starts at once, then one every `interval` seconds (fixed rate, measured start to
start), until `max_count` runs were started or it is stopped. Pile-up policy: a tick that comes while the
previous run is still in flight is skipped (logged, counted, and reported as `background_skipped`), so at
most one background run per agent is ever in flight. One job per agent: starting another replaces it.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any

from loguru import logger

from llmling.errors import AgentBusyError, LLMlingError
from llmling.ipc.peer import Peer
from llmling.supervisor.control import BadRequest, field
from llmling.supervisor.triggers.base import Firing, TriggerHost

if TYPE_CHECKING:
    from llmling.config import SystemConfig
    from llmling.supervisor.system import Supervisor

Message = dict[str, Any]


class ShuttingDown(LLMlingError):
    """The system is stopping and starts nothing new."""


class BackgroundJob:
    """One agent's repeated prompt. Invariant: `current` is the run in flight, if any (at most one)."""

    __slots__ = ("agent", "current", "ended", "interval", "max_count", "prompt", "runs", "skipped", "task")

    def __init__(self, agent: str, prompt: str, interval: float, max_count: int | None) -> None:
        self.agent = agent
        self.prompt = prompt
        self.interval = interval
        self.max_count = max_count
        self.runs = 0
        self.skipped = 0
        self.current: Firing | None = None
        self.task: asyncio.Task[None] | None = None
        self.ended = False

    @property
    def busy(self) -> bool:
        return self.current is not None and not self.current.task.done()

    def info(self) -> Message:
        return {
            "agent": self.agent,
            "prompt": self.prompt,
            "interval": self.interval,
            "max_count": self.max_count,
            "runs": self.runs,
            "skipped": self.skipped,
            "in_flight": self.busy,
        }


class BackgroundRuns:
    """The service that owns every background job of a system (at most one per agent)."""

    name = "background"

    def __init__(self, supervisor: Supervisor) -> None:
        self.host = TriggerHost(supervisor)
        self._config = supervisor.config
        self.jobs: dict[str, BackgroundJob] = {}
        self._stopped = False
        supervisor.services.append(self)
        supervisor.control.register("background_start", self._on_start)
        supervisor.control.register("background_stop", self._on_stop)
        supervisor.control.register("background_list", self._on_list)

    # -- service --------------------------------------------------------------------------------------------
    async def start(self) -> None:
        self.start_jobs(self._config, tuple(self._config.agents))

    def start_jobs(self, config: SystemConfig, agents: tuple[str, ...]) -> None:
        """Start the configured jobs of `agents` (at start, and for the agents a reload changed)."""
        self._config = config
        for name in agents:
            agent = config.agents.get(name)
            if agent is not None and agent.background is not None:
                self.start_job(
                    name, agent.background.prompt, agent.background.interval, agent.background.max_count
                )

    def stop_jobs(self, agents: tuple[str, ...]) -> None:
        """Stop the jobs of `agents` (a reload changed or removed their `background`)."""
        for name in agents:
            if name in self.jobs:
                self.stop_job(name, reason="reloaded")

    async def stop(self) -> None:
        """End every timer; a run in flight finishes during the drain like any other run."""
        self._stopped = True
        tasks = [job.task for job in self.jobs.values() if job.task is not None]
        for agent in list(self.jobs):
            self.stop_job(agent, reason="shutdown")
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)

    # -- jobs -----------------------------------------------------------------------------------------------
    def start_job(
        self, agent: str, prompt: str, interval: float, max_count: int | None = None
    ) -> tuple[BackgroundJob, bool]:
        """Start (or replace) `agent`'s job; returns it and whether one was replaced.

        Raises UnknownAgentError, ShuttingDown, or ValueError for an interval or count out of range.
        """
        self.host.router.slot(agent)
        if not math.isfinite(interval) or interval <= 0:
            raise ValueError("interval must be a positive number of seconds")
        if max_count is not None and max_count < 1:
            raise ValueError("max_count must be at least 1")
        if self._stopped or not self.host.accepting:
            raise ShuttingDown("the system is shutting down")
        replaced = self.stop_job(agent, reason="replaced") is not None
        job = BackgroundJob(agent, prompt, float(interval), max_count)
        self.jobs[agent] = job
        job.task = self.host.spawn(self._loop(job), name=f"background-{agent}")
        logger.bind(agent=agent).info(
            "background runs every {} s{}", job.interval, f", {max_count} at most" if max_count else ""
        )
        self.host.emit(
            {
                "event": "background_started",
                "agent": agent,
                "prompt": prompt,
                "interval": job.interval,
                "max_count": max_count,
            }
        )
        return job, replaced

    def stop_job(self, agent: str, reason: str = "stopped") -> BackgroundJob | None:
        """Stop `agent`'s job (its run in flight, if any, still finishes); None when it had none."""
        self.host.router.slot(agent)
        job = self.jobs.pop(agent, None)
        if job is None:
            return None
        if job.task is not None:
            job.task.cancel()
        self._ended(job, reason)
        return job

    def _ended(self, job: BackgroundJob, reason: str) -> None:
        if job.ended:
            return
        job.ended = True
        logger.bind(agent=job.agent).info("background runs {}: {} runs, {} skipped", reason, job.runs, job.skipped)
        self.host.emit(
            {
                "event": "background_stopped",
                "agent": job.agent,
                "reason": reason,
                "runs": job.runs,
                "skipped": job.skipped,
            }
        )

    async def _loop(self, job: BackgroundJob) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while job.max_count is None or job.runs < job.max_count:
            await asyncio.sleep(max(0.0, due - loop.time()))
            if not self.host.accepting:
                return
            now = loop.time()
            if now - due >= job.interval:
                due = now  # ticks missed while the loop was blocked are skipped, not replayed
            if job.busy:
                self._skip(job, "background run still in flight; tick skipped")
            else:
                try:
                    job.current = firing = self.host.start_run(job.agent, job.prompt)
                except AgentBusyError as exc:
                    self._skip(job, f"{exc}; tick skipped", reason="busy")
                    due += job.interval
                    continue
                job.runs += 1
                self.host.emit(
                    {
                        "event": "background_run",
                        "agent": job.agent,
                        "id": firing.id,
                        "trace_id": firing.trace_id,
                        "count": job.runs,
                    }
                )
            due += job.interval
        if self.jobs.get(job.agent) is job:
            del self.jobs[job.agent]
        self._ended(job, "max_count")

    def _skip(self, job: BackgroundJob, why: str, reason: str = "in_flight") -> None:
        job.skipped += 1
        logger.bind(agent=job.agent).info("{}", why)
        self.host.emit(
            {"event": "background_skipped", "agent": job.agent, "skipped": job.skipped, "reason": reason}
        )

    # -- control requests -----------------------------------------------------------------------------------
    def _on_start(self, peer: Peer, message: Message) -> None:
        agent = field(message, "agent", str)
        prompt = field(message, "prompt", str)
        interval = field(message, "interval", (int, float))
        max_count = field(message, "max_count", (int, type(None)), default=None)
        if isinstance(interval, bool) or isinstance(max_count, bool):
            raise BadRequest("fields 'interval' and 'max_count' must be numbers")
        if not prompt:
            raise BadRequest("field 'prompt' must not be empty")
        try:
            job, replaced = self.start_job(agent, prompt, float(interval), max_count)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        peer.reply(message, {"t": "ok", "replaced": replaced, "job": job.info()})

    def _on_stop(self, peer: Peer, message: Message) -> None:
        job = self.stop_job(field(message, "agent", str))
        peer.reply(message, {"t": "ok", "stopped": job is not None, "job": job.info() if job else None})

    def _on_list(self, peer: Peer, message: Message) -> None:
        peer.reply(message, {"t": "ok", "jobs": [job.info() for job in self.jobs.values()]})


__all__ = ["BackgroundJob", "BackgroundRuns", "ShuttingDown"]
