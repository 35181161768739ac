"""`llmling trigger ...` and `llmling background ...`: live control of a running system's automation."""

from __future__ import annotations

import json
from typing import Any

import click

from llmling.cli.complete import agent_names
from llmling.cli.target import request, with_system

Message = dict[str, Any]


# -- triggers -------------------------------------------------------------------------------------------------
@click.group()
def trigger() -> None:
    """List, enable and disable the triggers of a running system."""


def _set_trigger(agent: str, trigger_name: str, name: str | None, socket_: str | None, enabled: bool) -> None:
    reply = request(name, socket_, {"t": "trigger", "agent": agent, "name": trigger_name, "enabled": enabled})
    info = reply["trigger"]
    click.echo(f"{info['agent']}/{info['name']} ({info['type']}): {'enabled' if info['enabled'] else 'disabled'}")


@trigger.command("enable")
@click.argument("agent", shell_complete=agent_names)
@click.argument("trigger_name", metavar="NAME")
@with_system
def trigger_enable(agent: str, trigger_name: str, name: str | None, socket_: str | None) -> None:
    """Turn AGENT's trigger NAME on."""
    _set_trigger(agent, trigger_name, name, socket_, True)


@trigger.command("disable")
@click.argument("agent", shell_complete=agent_names)
@click.argument("trigger_name", metavar="NAME")
@with_system
def trigger_disable(agent: str, trigger_name: str, name: str | None, socket_: str | None) -> None:
    """Turn AGENT's trigger NAME off (it stays configured; `enable` turns it back on)."""
    _set_trigger(agent, trigger_name, name, socket_, False)


@trigger.command("list")
@with_system
@click.option("--json", "as_json", is_flag=True, help="print the triggers as JSON")
def trigger_list(name: str | None, socket_: str | None, as_json: bool) -> None:
    """Show every trigger: its state and how often it fired."""
    triggers = request(name, socket_, {"t": "triggers"})["triggers"]
    if as_json:
        click.echo(json.dumps(triggers))
        return
    click.echo(
        f"{'AGENT':<20} {'TRIGGER':<20} {'TYPE':<8} {'STATE':<9} {'FIRED':>6} {'SKIPPED':>8} {'FAILED':>7}"
        f" {'REJECTED':>9}"
    )
    for item in triggers:
        state = "enabled" if item["enabled"] else "disabled"
        click.echo(
            f"{item['agent']:<20} {item['name']:<20} {item['type']:<8} {state:<9} "
            f"{item['fired']:>6} {item['skipped']:>8} {item['failed']:>7} {item['rejected']:>9}"
        )


# -- background runs ------------------------------------------------------------------------------------------
@click.group()
def background() -> None:
    """Start, stop and list the background runs of a running system."""


@background.command("start")
@click.argument("agent", shell_complete=agent_names)
@click.argument("prompt")
@click.option("--interval", "-i", type=float, required=True, help="seconds between the starts of two runs")
@click.option("--max-count", type=click.IntRange(min=1), help="stop after this many runs")
@with_system
def background_start(
    agent: str, prompt: str, interval: float, max_count: int | None, name: str | None, socket_: str | None
) -> None:
    """Run PROMPT on AGENT now and then every INTERVAL seconds (replaces AGENT's current background run)."""
    message: Message = {"t": "background_start", "agent": agent, "prompt": prompt, "interval": interval}
    if max_count is not None:
        message["max_count"] = max_count
    reply = request(name, socket_, message)
    limit = f", {max_count} runs at most" if max_count else ""
    note = " (replaced the previous one)" if reply.get("replaced") else ""
    click.echo(f"{agent}: background runs every {interval:g} s{limit}{note}")


@background.command("stop")
@click.argument("agent", shell_complete=agent_names)
@with_system
def background_stop(agent: str, name: str | None, socket_: str | None) -> None:
    """Stop AGENT's background runs (a run in flight still finishes)."""
    reply = request(name, socket_, {"t": "background_stop", "agent": agent})
    job = reply.get("job")
    if not reply.get("stopped") or job is None:
        click.echo(f"{agent}: no background runs")
        return
    click.echo(f"{agent}: background runs stopped after {job['runs']} runs ({job['skipped']} ticks skipped)")


@background.command("list")
@with_system
@click.option("--json", "as_json", is_flag=True, help="print the jobs as JSON")
def background_list(name: str | None, socket_: str | None, as_json: bool) -> None:
    """Show the background runs of every agent."""
    jobs = request(name, socket_, {"t": "background_list"})["jobs"]
    if as_json:
        click.echo(json.dumps(jobs))
        return
    if not jobs:
        click.echo("no background runs")
        return
    click.echo(f"{'AGENT':<20} {'EVERY':>8} {'RUNS':>6} {'MAX':>6} {'SKIPPED':>8}  PROMPT")
    for job in jobs:
        limit = job["max_count"] if job["max_count"] is not None else "-"
        text = " ".join(job["prompt"].split())[:40]
        click.echo(
            f"{job['agent']:<20} {job['interval']:>7g}s {job['runs']:>6} {limit!s:>6} {job['skipped']:>8}  {text}"
        )


__all__ = ["background", "trigger"]
