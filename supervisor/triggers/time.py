"""Time triggers: a cron expression (the wall clock of the trigger's `timezone`, default local) or a fixed
interval starts runs. Daylight saving time neither skips nor doubles a cron run (see llmling/cron.py).

Missed ticks are skipped, never replayed: nothing is remembered across a restart (the next tick is computed
from the time the system starts), and a tick noticed too late (the machine slept, the clock jumped, the
loop was blocked) is reported as `trigger_skipped` with reason `missed`. A tick that comes while the
trigger's previous run is still in flight is skipped too (reason `busy`), so slow runs never pile up.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

from llmling.cron import CronSchedule
from llmling.supervisor.triggers.base import TriggerHost, TriggerState, render

# A cron tick noticed later than this (seconds) is skipped as missed.
CRON_GRACE = 60.0
# The longest single sleep towards a cron tick, so a changed wall clock is noticed.
CRON_NAP = 30.0


class TimeTriggers:
    """The service of every time trigger of a system: one sleeping task per trigger."""

    name = "time-triggers"

    def __init__(self, host: TriggerHost, triggers: list[TriggerState]) -> None:
        self.host = host
        self.triggers = triggers
        self.tasks: list[asyncio.Task[Any]] = []
        self.counts: dict[str, int] = {}

    async def start(self) -> None:
        for trigger in self.triggers:
            config: Any = trigger.config
            loop = (
                self._cron(trigger, CronSchedule.parse(config.cron, config.timezone))
                if config.cron
                else self._interval(trigger)
            )
            self.tasks.append(self.host.spawn(loop, name=f"time-trigger-{trigger.label}"))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=2.0)

    async def _interval(self, trigger: TriggerState) -> None:
        interval: float = trigger.config.interval_s  # type: ignore[union-attr]
        loop = asyncio.get_running_loop()
        due = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            now = loop.time()
            late = now - due
            if late >= interval:
                # Ticks missed (the loop was blocked, the machine slept): skip them, fire once, start afresh.
                missed = int(late // interval)
                self.host.log.bind(agent=trigger.agent).info(
                    "trigger {}: {} tick(s) missed, skipped", trigger.label, missed
                )
                self.host.skip(trigger, "missed", missed=missed)
                due = now
            self.tick(trigger)
            due += interval

    async def _cron(self, trigger: TriggerState, schedule: CronSchedule) -> None:
        wall, due = schedule.next_after(None)
        while True:
            delay = due - time.time()
            while delay > 0:  # in naps, so a changed wall clock (or a suspend) is noticed
                await asyncio.sleep(min(delay, CRON_NAP))
                delay = due - time.time()
            when = datetime.fromtimestamp(due, schedule.tz)  # naive local time, or aware in the zone
            late = time.time() - due
            if late > CRON_GRACE:
                self.host.log.bind(agent=trigger.agent).info(
                    "trigger {}: tick of {} missed by {:.0f} s, skipped", trigger.label, when.isoformat(), late
                )
                self.host.skip(trigger, "missed", due=when.isoformat(timespec="minutes"))
            else:
                self.tick(trigger, when)
            wall, due = schedule.next_after(wall)

    def tick(self, trigger: TriggerState, due: datetime | None = None) -> None:
        if not trigger.enabled:
            trigger.skipped += 1  # silent: a disabled trigger is quiet by design
            return
        if not self.host.accepting:
            return
        if trigger.in_flight:
            self.host.log.bind(agent=trigger.agent).info(
                "trigger {}: previous run still in flight; tick skipped", trigger.label
            )
            self.host.skip(trigger, "busy")
            return
        now = (due or datetime.now()).isoformat(timespec="seconds")
        count = self.counts[trigger.label] = self.counts.get(trigger.label, 0) + 1
        try:
            prompt = self.prompt(trigger, now, count)
        except ValueError as exc:
            trigger.last_error = str(exc)
            self.host.skip(trigger, "template", error=str(exc))
            return
        self.host.try_fire(trigger, prompt, time=now, count=count)

    @staticmethod
    def prompt(trigger: TriggerState, now: str, count: int) -> str:
        config: Any = trigger.config
        if config.prompt is not None:
            return str(config.prompt)
        template = config.template or "Scheduled run of trigger {name} at {time}"
        return render(template, time=now, count=count, name=trigger.name, agent=trigger.agent)


__all__ = ["CRON_GRACE", "TimeTriggers"]
