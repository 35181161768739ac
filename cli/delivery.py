"""`llmling dead-letters` and `llmling retry`: the runs that ended without a result, kept with their reason."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import click

from llmling.cli.target import request, with_system

Message = dict[str, Any]


@click.command("dead-letters")
@click.argument("words", nargs=-1, metavar="[AGENT] | purge [AGENT]")
@with_system
@click.option("--json", "as_json", is_flag=True, help="print the dead letters as a JSON list")
def dead_letters(words: tuple[str, ...], name: str | None, socket_: str | None, as_json: bool) -> None:
    """List the dead letters (of AGENT): runs whose attempts are exhausted, whose failure is not retried, or
    whose agent could not take them. `dead-letters purge [AGENT]` deletes them."""
    purge = bool(words) and words[0] == "purge"
    rest = words[1:] if purge else words
    if len(rest) > 1:
        raise click.UsageError("at most one AGENT")
    agent = rest[0] if rest else None
    if purge:
        reply = request(name, socket_, {"t": "dead_letters_purge", "agent": agent})
        click.echo(f"purged {reply['purged']} dead letter{'s' if reply['purged'] != 1 else ''}")
        return
    reply = request(name, socket_, {"t": "dead_letters", "agent": agent})
    letters = reply["dead_letters"]
    if as_json:
        click.echo(json.dumps(letters, ensure_ascii=False))
        return
    if not letters:
        click.echo("no dead letters")
        return
    click.echo(f"{'ID':<32}  {'AGENT':<16} {'SOURCE':<10} {'ATTEMPTS':>8}  {'WHEN':<19}  REASON")
    for item in letters:
        when = datetime.fromtimestamp(item["finished_at"] or item["accepted_at"]).strftime("%Y-%m-%d %H:%M:%S")
        click.echo(
            f"{item['id']:<32}  {item['agent']:<16} {item['source']:<10} {item['attempts']:>8}  {when:<19}  "
            f"{item['reason']}"
        )
    if reply.get("truncated"):
        click.echo(f"(the oldest {len(letters)} shown)")


@click.command("retry")
@click.argument("ids", nargs=-1, metavar="ID...")
@with_system
@click.option("--all", "all_", is_flag=True, help="every dead letter (of --agent)")
@click.option("--agent", help="with --all: only this agent's dead letters")
def retry(ids: tuple[str, ...], name: str | None, socket_: str | None, all_: bool, agent: str | None) -> None:
    """Deliver dead letters again: the same run ids, a fresh attempt budget."""
    if bool(ids) == all_:
        raise click.UsageError("give run IDs or --all")
    message: Message = {"t": "retry", "agent": agent} if all_ else {"t": "retry", "ids": list(ids)}
    retried = request(name, socket_, message)["retried"]
    click.echo(f"retrying {len(retried)} run{'s' if len(retried) != 1 else ''}")
    for run_id in retried:
        click.echo(f"  {run_id}")
