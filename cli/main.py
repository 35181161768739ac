"""The `llmling` command line."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from llmling.cli.automation import background, trigger
from llmling.cli.complete import agent_names
from llmling.cli.dashboard import dashboard
from llmling.cli.delivery import dead_letters, retry
from llmling.cli.host import host
from llmling.cli.logs import logs
from llmling.cli.systemd import systemd_unit
from llmling.cli.target import connect, fail_on_error, request, with_system
from llmling.cli.watch import watch
from llmling.ipc.frames import PromptTooLarge, check_prompt_size

Message = dict[str, Any]
# `send --wait`: the exit status when the run succeeded and a run of its downstream tree failed.
DOWNSTREAM_FAILED = 3


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="llmling")
def main() -> None:
    """llmling: LLM agents, one process each, driven from the command line."""


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--socket", "socket_", envvar="LLMLING_SOCKET", help="control socket path")
@click.option("--log-level", default="INFO", show_default=True, help="loguru level for supervisor and agents")
@click.option("--quiet", "-q", is_flag=True, help="no start-up progress")
@click.option("--reload", is_flag=True, help="reload the config whenever its file changes (debounced)")
@click.option("--dashboard", metavar="[HOST:]PORT", help="also serve the web dashboard there (with a token)")
def up(config: str, socket_: str | None, log_level: str, quiet: bool, reload: bool, dashboard: str | None) -> None:
    """Run the system of CONFIG in the foreground until Ctrl+C or `llmling stop`. SIGHUP reloads CONFIG."""
    from llmling.cli.up import run_up

    sys.exit(run_up(config, socket_, log_level, quiet, reload, dashboard))


@main.command()
@click.argument("agent", shell_complete=agent_names)
@click.argument("text")
@with_system
@click.option("--json", "as_json", is_flag=True, help='print {"agent","content","id","trace_id","attempt"}')
@click.option(
    "--wait", is_flag=True, help="also wait for the downstream runs and print them (exit 3 if one failed)"
)
def send(agent: str, text: str, name: str | None, socket_: str | None, as_json: bool, wait: bool) -> None:
    """Send TEXT (or - for stdin) to AGENT and print the reply.

    Exit status: 0 done, 1 the run failed (or was not accepted), 3 with --wait: a downstream run failed."""
    if text == "-":
        text = sys.stdin.read()
    try:
        check_prompt_size(text)
    except PromptTooLarge as exc:
        raise click.ClickException(str(exc)) from None
    stream = not as_json
    request = {"t": "send", "agent": agent, "prompt": text, "stream": stream, "wait": wait}
    streamed = False
    reply: Message = {}
    try:
        with connect(name, socket_) as client:
            for reply in client.stream(request):
                if reply.get("t") == "chunk" and "text" in reply:
                    streamed = True
                    click.echo(reply.get("text", ""), nl=False)
    except ConnectionError as exc:
        raise click.ClickException(f"lost the system: {exc}") from None
    fail_on_error(reply)
    if as_json:
        out = {key: reply.get(key) for key in ("agent", "content", "id", "trace_id", "attempt")}
        if wait:
            out["downstream"] = [
                {
                    key: item.get(key)
                    for key in ("agent", "content", "id", "parent_id", "attempt", "error")
                    if key in item
                }
                for item in reply.get("downstream", [])
            ]
        click.echo(json.dumps(out, ensure_ascii=False))
    else:
        click.echo("" if streamed else reply.get("content", ""))
        for item in reply.get("downstream", []):
            text = item.get("content") if "error" not in item else f"error: {item['error']}"
            click.echo(f"[{item.get('agent')}] {text}")
    if any("error" in item for item in reply.get("downstream", [])):
        sys.exit(DOWNSTREAM_FAILED)


@main.command()
@with_system
@click.option("--json", "as_json", is_flag=True, help="print the status as JSON")
def status(name: str | None, socket_: str | None, as_json: bool) -> None:
    """Show the supervisor, one line per agent and, for an agent with several, one per process (with its host)."""
    reply = request(name, socket_, {"t": "status"})
    totals = reply.get("totals") or {}
    if as_json:
        keys = ("name", "pid", "state", "restarts", "queued", "running", "replicas", "placement", "processes")
        out = {
            "name": reply["name"],
            "pid": reply["pid"],
            "agents": [{key: agent.get(key) for key in keys} for agent in reply["agents"]],
            # Per agent since the system started: runs, prompt/completion/total tokens, cost (USD or null).
            "totals": totals,
        }
        click.echo(json.dumps(out))
        return
    from llmling.cli.history import cost_text

    click.echo(f"system {reply['name']}  supervisor pid {reply['pid']}  socket {reply['socket']}")
    click.echo(
        f"{'AGENT':<20} {'PID':>8}  {'STATE':<11} {'RESTARTS':>8} {'RUNS':>6} {'TOKENS':>8} {'COST':>10}  HOST"
    )
    for agent in reply["agents"]:
        pid = agent["pid"] if agent["pid"] is not None else "-"
        used = totals.get(agent["name"]) or {}
        processes = agent.get("processes") or []
        host = (
            processes[0]["host"] if len(processes) == 1 else f"({len(processes)} processes)" if processes else ""
        )
        click.echo(
            f"{agent['name']:<20} {pid!s:>8}  {agent['state']:<11} {agent['restarts']:>8} "
            f"{used.get('runs', 0):>6} {used.get('total_tokens', 0):>8} {cost_text(used.get('cost')):>10}  {host}"
        )
        for number, process in enumerate(processes if len(processes) > 1 else (), 1):
            label = f"  {agent['name']}#{number}"
            pid = process["pid"] if process["pid"] is not None else "-"
            click.echo(
                f"{label:<20} {pid!s:>8}  {process['state']:<11} {process['restarts']:>8} "
                f"{'':>6} {'':>8} {'':>10}  {process['host']}"
            )
    for model in reply.get("models", []):
        click.echo(f"{'model:' + model['name']:<20} {model['pid']!s:>8}  {model['api_base']}")


@main.command()
@click.argument("agent", shell_complete=agent_names)
@with_system
@click.option("--limit", "-l", default=20, show_default=True, help="the last N runs (0: all, at most 1000)")
@click.option("--json", "as_json", is_flag=True, help='print {"agent","path","runs":[...],"totals"} as JSON')
@click.option("--config", "-c", type=click.Path(dir_okay=False), help="read this config's history.db directly")
@click.option("--state-dir", type=click.Path(file_okay=False), help="read the history.db in this folder directly")
def history(
    agent: str,
    name: str | None,
    socket_: str | None,
    limit: int,
    as_json: bool,
    config: str | None,
    state_dir: str | None,
) -> None:
    """Show AGENT's recorded runs (prompt, reply, tokens, cost), oldest first, and its totals.

    Asks the running system; with --config or --state-dir, or when no system runs, reads history.db directly."""
    from llmling.cli.offline import DB_NAME, find_state_file, read_history, system_running

    if config or state_dir or not system_running(name, socket_):
        reply = read_history(find_state_file(config, state_dir, name, DB_NAME), agent, limit)
    else:
        reply = request(name, socket_, {"t": "history", "agent": agent, "limit": limit})
    if as_json:
        reply.pop("t", None)
        reply.pop("re", None)
        click.echo(json.dumps(reply, ensure_ascii=False))
        return
    from llmling.cli.history import history_text

    click.echo(history_text(reply))


@main.command()
@with_system
@click.option("--timeout", default=120.0, show_default=True, help="seconds to wait for the reload to apply")
def reload(name: str | None, socket_: str | None, timeout: float) -> None:
    """Re-read the config file of a running system and apply the change (as SIGHUP does).

    An invalid config, or one that changes `name`, `state_dir` or `durability`, changes nothing; the error
    says why and the exit status is 1."""
    reply = request(name, socket_, {"t": "reload"}, timeout=timeout)
    click.echo(f"reloaded: {reply['summary']}")


@main.command()
@with_system
@click.option("--timeout", default=30.0, show_default=True, help="seconds to wait for the system to end")
def stop(name: str | None, socket_: str | None, timeout: float) -> None:
    """Stop a running system gracefully and wait until it has ended."""
    with connect(name, socket_, timeout) as client:
        fail_on_error(client.request({"t": "stop"}))
        try:
            while True:
                client.receive()  # nothing more is sent: this raises when the supervisor closes the socket
        except TimeoutError:
            raise click.ClickException(f"the system did not end within {timeout} s") from None
        except ConnectionError:
            click.echo("stopped")


@main.command()
@click.argument("agent")
@with_system
@click.option(
    "--timeout", default=180.0, show_default=True, help="seconds to wait for the fresh process to be READY"
)
def restart(agent: str, name: str | None, socket_: str | None, timeout: float) -> None:
    """Replace AGENT's process with a fresh one (also after it failed: resets its restart count).

    Runs in flight get up to the system's shutdown_timeout to finish; runs sent meanwhile wait for the fresh
    process.
    """
    reply = request(name, socket_, {"t": "restart", "agent": agent}, timeout=timeout)
    click.echo(f"restarted {agent} (pid {reply['agent']['pid']})")


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
def validate(config: str) -> None:
    """Check CONFIG: its schema, that every module:function path resolves, and the API keys its models need;
    print the problems with file:line, exit 2 when there are any."""
    from llmling.config import load_config
    from llmling.config.import_check import check_import_paths
    from llmling.config.providers import missing_keys
    from llmling.errors import ConfigError

    try:
        system = load_config(config)
        problems = check_import_paths(system, config)
    except (ConfigError, RuntimeError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    problems += [f"{config}: {where}: {problem}" for where, problem in missing_keys(system.agents).items()]
    if problems:
        for problem in problems:
            click.echo(f"error: {problem}", err=True)
        sys.exit(2)
    count = len(system.agents)
    click.echo(f"{config}: ok (system {system.name!r}, {count} agent{'s' if count != 1 else ''})")


@main.command()
def schema() -> None:
    """Print the config's JSON schema."""
    from llmling.config import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


# Automation: live events, triggers, background runs, the systemd unit, the web dashboard, agent hosts.
for _command in (watch, trigger, background, systemd_unit, logs, dead_letters, retry, dashboard, host):
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main(prog_name=os.path.basename(sys.argv[0]))
