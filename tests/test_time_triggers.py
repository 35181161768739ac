"""Time triggers: the cron matcher, interval ticks into real agent runs, no pile-up, missed ticks skipped."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import subprocess
import sys
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from llmling import AgentPool
from llmling.config import load_config
from llmling.cron import CronError, CronSchedule
from tests._automation import RECORDER, got, wait_until, write_system

# -- the cron schedule (croniter, walked in wall-clock time of a zone) -------------------------------------------
UTC = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")


def _next(text: str, after: datetime, timezone: str = "UTC") -> datetime:
    schedule = CronSchedule.parse(text, timezone)
    _, due = schedule.next_after(None, after.replace(tzinfo=schedule.tz).timestamp())
    return datetime.fromtimestamp(due, schedule.tz).replace(tzinfo=None)


def test_cron_next_after() -> None:
    assert _next("*/15 * * * *", datetime(2024, 3, 1, 10, 7, 30)) == datetime(2024, 3, 1, 10, 15)
    assert _next("*/15 * * * *", datetime(2024, 3, 1, 10, 45)) == datetime(2024, 3, 1, 11, 0)
    assert _next("0 * * * *", datetime(2024, 12, 31, 23, 0)) == datetime(2025, 1, 1, 0, 0)
    assert _next("30 9 * * mon-fri", datetime(2024, 3, 1, 10, 0)) == datetime(2024, 3, 4, 9, 30)  # Fri → Mon
    assert _next("0 0 29 2 *", datetime(2024, 3, 1)) == datetime(2028, 2, 29)
    assert _next("@hourly", datetime(2024, 3, 1, 10, 7)) == datetime(2024, 3, 1, 11, 0)
    assert _next("0 0 * * 7", datetime(2024, 3, 1)) == datetime(2024, 3, 3)  # 7 is Sunday, like 0
    # Day of month and day of week both restricted: either matches (Vixie cron).
    assert _next("0 12 13 * fri", datetime(2024, 9, 1)) == datetime(2024, 9, 6, 12)  # a Friday before the 13th
    assert _next("0 12 13 * fri", datetime(2024, 9, 6, 12)) == datetime(2024, 9, 13, 12)  # the 13th, a Friday
    # The zone's wall clock: 09:00 in Tokyo is 00:00 UTC.
    schedule = CronSchedule.parse("0 9 * * *", "Asia/Tokyo")
    _, due = schedule.next_after(None, datetime(2024, 3, 1, 1, 0, tzinfo=UTC).timestamp())
    assert datetime.fromtimestamp(due, UTC) == datetime(2024, 3, 2, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("* * * *", "expected 5 fields"),
        ("* * * * * *", "expected 5 fields"),
        ("60 * * * *", "out of range"),
        ("*/0 * * * *", "step"),
        ("* * * foo *", "not acceptable"),
        ("0 0 30 2 *", "never matches"),
    ],
)
def test_cron_errors(text: str, message: str) -> None:
    with pytest.raises(CronError, match=message):
        CronSchedule.parse(text)


def _fires(text: str, timezone: str, start: datetime, end: datetime) -> list[datetime]:
    """Every fire between `start` and `end` (aware), as the trigger computes them: the next fire is asked for
    just after the previous one went off."""
    schedule = CronSchedule.parse(text, timezone)
    fires: list[datetime] = []
    wall, now = None, start.timestamp()
    while True:
        wall, due = schedule.next_after(wall, now)
        if due >= end.timestamp():
            return fires
        fires.append(datetime.fromtimestamp(due, schedule.tz))
        now = due + 0.5  # the tick ran; the loop computes the next one


@pytest.mark.parametrize(
    ("day", "expected", "hours"),
    [
        # Spring forward: 02:00 CET becomes 03:00 CEST, 02:30 does not exist: it fires once, past the jump.
        (
            date(2026, 3, 29),
            ["2026-03-28T02:30:00+01:00", "2026-03-29T03:30:00+02:00", "2026-03-30T02:30:00+02:00"],
            70,
        ),
        # Fall back: 03:00 CEST becomes 02:00 CET, 02:30 happens twice: it fires at the first one only.
        (
            date(2026, 10, 25),
            ["2026-10-24T02:30:00+02:00", "2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"],
            71,
        ),
    ],
)
def test_cron_dst_neither_skips_nor_doubles(day: date, expected: list[str], hours: int) -> None:
    start = datetime.combine(day - timedelta(days=1), datetime.min.time(), BERLIN)
    fires = _fires("30 2 * * *", "Europe/Berlin", start, start + timedelta(days=3))
    assert [fire.isoformat() for fire in fires] == expected
    assert [fire.date() for fire in fires] == [day - timedelta(days=1), day, day + timedelta(days=1)]
    # Hourly over the 3 days after midnight: 71 wall-clock hours. Spring forward: 02:00 fires at 03:00 CEST,
    # which is then not run again (70 runs). Fall back: the repeated hour does not run twice (71 runs).
    hourly = _fires("0 * * * *", "Europe/Berlin", start, start + timedelta(days=3))
    instants = [fire.timestamp() for fire in hourly]
    assert len(set(instants)) == len(instants) == hours
    walls = [fire.replace(tzinfo=None) for fire in hourly]
    assert len(set(walls)) == len(walls)


# -- ticks into real runs -------------------------------------------------------------------------------------
def test_interval_trigger_runs_agent(systems) -> None:  # type: ignore[no-untyped-def]
    system = systems.start(
        """
        agents:
          reporter:
            callback: rec:record
            triggers:
              - type: time
                name: fast
                interval_s: 0.3
                prompt: Write the report
              - type: time
                name: templated
                interval_s: 0.4
                template: "tick {count} of {name} for {agent} at {time}"
        """,
        modules={"rec": RECORDER},
    )
    folder = system.config.parent
    wait_until(lambda: sum(call["prompt"] == "Write the report" for call in got(folder)) >= 3, what="3 ticks")
    templated = wait_until(
        lambda: [c["prompt"] for c in got(folder) if c["prompt"].startswith("tick ")], what="templated tick"
    )
    assert templated[0].startswith("tick 1 of templated for reporter at ")

    reply = system.request({"t": "triggers"})
    fast = next(item for item in reply["triggers"] if item["name"] == "fast")
    assert fast["type"] == "time" and fast["enabled"] and fast["fired"] >= 3


def test_disable_and_enable_time_trigger(systems) -> None:  # type: ignore[no-untyped-def]
    system = systems.start(
        """
        agents:
          reporter:
            callback: rec:record
            triggers:
              - {type: time, name: fast, interval_s: 0.2, prompt: tick, enabled: false}
        """,
        modules={"rec": RECORDER},
    )
    folder = system.config.parent
    time.sleep(0.8)
    assert got(folder) == [], "a disabled trigger fired"
    result = system.cli("trigger", "enable", "reporter", "fast")
    assert result.returncode == 0, result.stderr
    assert "reporter/fast (time): enabled" in result.stdout
    wait_until(lambda: len(got(folder)) >= 2, what="ticks after enable")
    result = system.cli("trigger", "disable", "reporter", "fast")
    assert result.returncode == 0, result.stderr
    time.sleep(0.3)  # a run started just before may still land
    count = len(got(folder))
    time.sleep(0.8)
    assert len(got(folder)) == count, "a disabled trigger kept firing"
    listed = system.cli("trigger", "list")
    assert "fast" in listed.stdout and "disabled" in listed.stdout

    unknown = system.cli("trigger", "enable", "reporter", "nope")
    assert unknown.returncode != 0 and "has no trigger 'nope'" in unknown.stderr


def _pool_config(tmp_path: Path, trigger: str, callback: str = "rec:record") -> Path:
    return write_system(
        tmp_path / "sys",
        f"""
        agents:
          reporter:
            callback: {callback}
            env_passthrough: [REC_SLOW]
            triggers:
              - {trigger}
        """,
    )


async def test_busy_tick_is_skipped_not_piled_up(
    tmp_path: Path, sock_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REC_SLOW", "1.0")
    path = _pool_config(tmp_path, "{type: time, name: fast, interval_s: 0.25, prompt: go}", "rec:slow")
    events: list[dict] = []
    async with AgentPool(load_config(path), socket=sock_path) as pool:
        pool.supervisor.add_listener(events.append)
        await asyncio.sleep(2.6)
    calls = got(path.parent)
    assert len(calls) >= 1
    for earlier, later in itertools.pairwise(calls):
        assert later["start"] >= earlier["end"] - 0.01, "two runs of one trigger overlapped"
    skipped = [e for e in events if e.get("event") == "trigger_skipped"]
    assert skipped and all(e["reason"] == "busy" for e in skipped)
    fired = [e for e in events if e.get("event") == "trigger_fired"]
    assert len(fired) <= 3  # 2.6 s of 1 s runs: never one per tick


async def test_missed_ticks_are_skipped_not_replayed(tmp_path: Path, sock_path: Path) -> None:
    path = _pool_config(tmp_path, "{type: time, name: fast, interval_s: 0.2, prompt: go}")
    events: list[tuple[float, dict]] = []
    two_fired = asyncio.Event()

    def on_event(event: dict) -> None:
        events.append((time.monotonic(), event))
        if sum(e.get("event") == "trigger_fired" for _, e in events) >= 2:
            two_fired.set()

    async with AgentPool(load_config(path), socket=sock_path) as pool:
        pool.supervisor.add_listener(on_event)
        await two_fired.wait()
        time.sleep(1.1)  # noqa: ASYNC251  (the loop is blocked on purpose: five ticks come and go meanwhile)
        unblocked = time.monotonic()
        await asyncio.sleep(0.5)
    missed = [e for t, e in events if t >= unblocked and e.get("event") == "trigger_skipped"]
    assert missed and missed[0]["reason"] == "missed" and missed[0]["missed"] >= 4
    burst = [t for t, e in events if e.get("event") == "trigger_fired" and unblocked <= t < unblocked + 0.15]
    assert len(burst) <= 1, "missed ticks were replayed in a burst"


@pytest.mark.parametrize(
    ("trigger", "message"),
    [
        ("{type: time, name: t, cron: '0 0 30 2 *'}", "invalid cron expression: '0 0 30 2 *' never matches"),
        ("{type: time, name: t, cron: '0 9 * * *', timezone: Mars/Olympus}", "unknown time zone 'Mars/Olympus'"),
        ("{type: time, name: t, interval_s: 1, timezone: UTC}", "'timezone' applies to 'cron' only"),
        ("{type: time, name: t, cron: '* * *'}", "expected 5 fields"),
        ("{type: time, name: t}", "set exactly one of 'cron' or 'interval_s'"),
        ("{type: time, name: t, interval_s: 1, cron: '* * * * *'}", "set exactly one"),
        ("{type: time, name: t, interval_s: 0}", "greater than 0"),
        ("{type: time, name: t, interval_s: 1, template: '{nope}'}", "unknown template field {nope}"),
        ("{type: file, name: f, paths: [x], template: '{path'}", "not valid str.format syntax"),
        ("{type: webhook, name: w, port: 8000, path: nope}", "must start with /"),
        ("{type: cron, name: c}", "does not match any of the expected tags"),
    ],
)
def test_trigger_config_errors(trigger: str, message: str) -> None:
    from llmling.config import parse_config
    from llmling.errors import ConfigError

    text = f"agents:\n  a:\n    callback: cb:echo\n    triggers:\n      - {trigger}\n"
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        parse_config(text, "agents.yml")
    assert str(error.value).startswith("agents.yml:5: agents.a.triggers.0")


def test_trigger_config_names_and_webhook_conflicts() -> None:
    from llmling.config import parse_config
    from llmling.errors import ConfigError

    twice = "agents:\n  a:\n    callback: cb:echo\n    triggers:\n" + (
        "      - {type: time, name: t, interval_s: 1}\n" * 2
    )
    with pytest.raises(ConfigError, match="two triggers are named 't'"):
        parse_config(twice)
    clash = (
        "agents:\n"
        "  a:\n    callback: cb:echo\n    triggers:\n      - {type: webhook, name: w, port: 8000}\n"
        "  b:\n    callback: cb:echo\n    triggers:\n      - {type: webhook, name: v, port: 8000}\n"
    )
    with pytest.raises(ConfigError, match=r"agents.yml:9: .*:8000/webhook is already used by trigger a/w"):
        parse_config(clash, "agents.yml")
    ok = clash.replace("port: 8000}\n  b", "port: 8000, path: /a}\n  b")
    assert len(parse_config(ok).agents["b"].triggers) == 1


def test_cron_default_zone_is_local_time_with_its_dst() -> None:
    """Without `timezone:` the machine's local time counts, DST included (TZ=Europe/Berlin in a child)."""
    probe = (
        "from datetime import datetime\n"
        "from llmling.cron import CronSchedule\n"
        "s = CronSchedule.parse('30 2 * * *')\n"
        "wall, now = None, datetime(2026, 10, 24).timestamp()\n"
        "for _ in range(3):\n"
        "    wall, due = s.next_after(wall, now)\n"
        "    print(datetime.fromtimestamp(due).astimezone().isoformat())\n"
        "    now = due + 0.5\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env={**os.environ, "TZ": "Europe/Berlin"}
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "2026-10-24T02:30:00+02:00",
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
    ]


async def test_cron_trigger_in_a_zone_runs_in_a_system(tmp_path: Path, sock_path: Path) -> None:
    """The supervisor's time service schedules a zoned cron trigger (its task sleeps towards the next tick)."""
    path = _pool_config(
        tmp_path, "{type: time, name: new_year, cron: '0 0 1 1 *', timezone: Asia/Tokyo, prompt: go}"
    )
    assert load_config(path).agents["reporter"].triggers[0].timezone == "Asia/Tokyo"
    async with AgentPool(load_config(path), socket=sock_path) as pool:
        (service,) = pool.supervisor.triggers.services.values()
        for _ in range(3):  # let the task compute its first tick
            await asyncio.sleep(0)
        assert service.tasks and not any(task.done() for task in service.tasks)
        (info,) = pool.supervisor.triggers.info()
        assert info["name"] == "new_year" and info["fired"] == 0
