"""What the supervisor hands an agent process at spawn (pickled through the forkserver, never on argv)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class AgentSpec:
    name: str
    # AgentConfig.model_dump(): plain data, so the child needs no config validation.
    config: dict[str, Any]
    socket_path: str
    # Invariant: known only to the supervisor and this agent's process; proves the connection is this agent.
    token: str
    # The config file's folder: importable for callbacks and tools.
    base_dir: str
    # Set by the supervisor for `local/<name>` models: where the embedded model serves (`config["model"]` is then
    # the litellm model string for that server).
    api_base: str | None = None
    # None: the process logs nothing (library use without llmling.enable_logging()).
    log_level: str | None = "INFO"
    # The process's environment on top of the forkserver's (the allow-listed base): the allow-list as the
    # supervisor has it now, the variables this agent's config names, its `env:` (supervisor/environment.py).
    env: dict[str, str] = field(default_factory=dict)
    # The conversation to resume ({"role", "content"} messages, oldest first), from the supervisor's history.
    history: list[dict[str, Any]] = field(default_factory=list)
