"""What one `llmling host` runs: which agents, how many processes each, under which host name and socket.

Pure functions of the config and the command line (no processes, no NATS), so every refusal is one line
before anything starts. The host runs its agents as a local system of their own: `host_config` is the
config reduced to them, each `placement: local` with the host's replica count, and nothing of the hub
(triggers, routes, background jobs, journal, metrics, telemetry, transport): the supervisor that runs `up`
owns those.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from pathlib import Path

from llmling.config import SystemConfig
from llmling.config.transport import MAX_REPLICAS, TransportConfig
from llmling.errors import LLMlingError
from llmling.ipc.paths import runtime_dir
from llmling.names import check_name, unknown

# Overrides the host's name (default: the machine's hostname): two hosts on one machine then differ.
HOST_NAME_ENV = "LLMLING_HOST_NAME"


class HostError(LLMlingError):
    """The host cannot run as asked (bad `--only`/`--replicas`, no NATS in the config, NATS refused us)."""


def host_name(name: str | None = None) -> str:
    """`name`, else $LLMLING_HOST_NAME, else the machine's hostname. Raises HostError for an invalid name."""
    value = name or os.environ.get(HOST_NAME_ENV) or socket.gethostname()
    try:
        return check_name(value)
    except ValueError as exc:
        raise HostError(f"host name {value!r} {exc}") from None


def parse_replicas(items: Iterable[str]) -> dict[str, int]:
    """`["a=2", "b=3"]` → `{"a": 2, "b": 3}`; raises HostError naming the bad item."""
    counts: dict[str, int] = {}
    for item in items:
        agent, sep, count = item.partition("=")
        if not sep or not agent.strip() or not count.strip().isdigit():
            raise HostError(f"--replicas {item!r}: expected AGENT=N")
        value = int(count)
        if not 1 <= value <= MAX_REPLICAS:
            raise HostError(f"--replicas {item!r}: N must be 1..{MAX_REPLICAS}")
        counts[agent.strip()] = value
    return counts


def pick_agents(config: SystemConfig, only: Iterable[str] | None, replicas: dict[str, int]) -> dict[str, int]:
    """The agents this host runs and their process counts: `only` (default: every agent whose placement is
    remote or any), each with `replicas[agent]` (default: its config's `replicas`). Raises HostError."""
    where = config.source or config.name
    if config.transport.nats is None:
        raise HostError(f"{where}: no 'transport: {{nats: {{url: ...}}}}': a host serves agents over NATS")
    if only is not None:
        names = [name.strip() for name in only if name.strip()]
        for name in names:
            if name not in config.agents:
                raise HostError(f"--only: {unknown('agent', name, config.agents)}")
    else:
        names = [name for name, agent in config.agents.items() if agent.placement != "local"]
        if not names:
            raise HostError(f"{where}: no agent has placement remote or any; name agents with --only")
    for name in replicas:
        if name not in names:
            raise HostError(f"--replicas {name}: not an agent of this host (it runs {', '.join(names)})")
    return {name: replicas.get(name, config.agents[name].replicas) for name in names}


def host_config(config: SystemConfig, agents: dict[str, int], host: str) -> SystemConfig:
    """The local system the host runs: only `agents`, local, with their process counts, and none of the hub's
    parts. Its state (the agents' log files) is kept in `<state_path>/host-<host>` of the system."""
    local = {
        name: config.agents[name].model_copy(
            update={"placement": "local", "replicas": count, "triggers": [], "connections": [], "background": None}
        )
        for name, count in agents.items()
    }
    return config.model_copy(
        update={
            "agents": local,
            "transport": TransportConfig(),
            "durability": "off",
            "metrics": None,
            "telemetry": None,
            "state_dir": str(config.state_path / f"host-{host}"),
        }
    )


def host_socket(system: str, host: str, override: str | None = None) -> Path:
    """The host's own agent socket: `override`, else `<runtime dir>/<system>.host-<host>.sock` (never the
    system's socket, nor $LLMLING_SOCKET: `up` may run on the same machine)."""
    return Path(override) if override else runtime_dir() / f"{system}.host-{host}.sock"


__all__ = [
    "HOST_NAME_ENV",
    "HostError",
    "host_config",
    "host_name",
    "host_socket",
    "parse_replicas",
    "pick_agents",
]
