"""`llmling host --config agents.yml [--only a,b] [--replicas a=2] [--name NAME]`: serve agents over NATS.

Thin: everything heavy (the config, the supervisor, nats-py) is imported when the command runs.
"""

from __future__ import annotations

import sys

import click


@click.command("host")
@click.option(
    "--config", "-c", "config", required=True, type=click.Path(dir_okay=False), help="the system's config"
)
@click.option("--only", metavar="A,B", help="these agents (default: every agent whose placement is remote or any)")
@click.option(
    "--replicas", multiple=True, metavar="AGENT=N", help="processes of AGENT here (default: its `replicas`)"
)
@click.option(
    "--name",
    envvar="LLMLING_HOST_NAME",
    help="this host's name in reports and `llmling status` [default: $LLMLING_HOST_NAME, else the hostname]",
)
@click.option(
    "--socket", "socket_", help="the host's agent socket [default: <runtime dir>/<system>.host-<name>.sock]"
)
@click.option("--log-level", default="INFO", show_default=True, help="loguru level for the host and its agents")
@click.option("--quiet", "-q", is_flag=True, help="no start-up progress")
def host(
    config: str,
    only: str | None,
    replicas: tuple[str, ...],
    name: str | None,
    socket_: str | None,
    log_level: str,
    quiet: bool,
) -> None:
    """Run agents of CONFIG on this machine and serve their runs from the system's NATS JetStream, until
    Ctrl+C or SIGTERM (runs in flight finish, up to shutdown_timeout; the rest go back to the queue; a second
    Ctrl+C gives them back at once).

    Exit status: 0 after a stop, 1 when it cannot start (NATS refused, an agent failed), 2 for a bad config
    or option."""
    sys.exit(run(config, only, replicas, name, socket_, log_level, quiet))


def run(
    path: str,
    only: str | None,
    replicas: tuple[str, ...],
    name: str | None,
    socket: str | None,
    log_level: str,
    quiet: bool,
) -> int:
    from llmling.cli.up import Progress, configure_logging
    from llmling.config import load_config
    from llmling.errors import ConfigError, StartupError
    from llmling.supervisor.host_plan import HostError, host_name, parse_replicas, pick_agents

    names = None if only is None else only.split(",")
    try:
        config = load_config(path)
        counts = parse_replicas(replicas)
        agents = pick_agents(config, names, counts)
        name = host_name(name)
    except (ConfigError, HostError) as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    configure_logging(log_level)
    from llmling.supervisor.host import run_host

    progress = Progress(len(agents), quiet)
    shown = ", ".join(f"{agent} ({count} processes)" if count > 1 else agent for agent, count in agents.items())
    progress._say(f"host {name!r} of {config.name!r}: starting {shown}")
    try:
        return run_host(
            config, only=names, replicas=counts, name=name, socket=socket, on_event=progress, log_level=log_level
        )
    except HostError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    except StartupError as exc:
        click.echo(f"error: {exc}", err=True)
        return 1


__all__ = ["host"]
