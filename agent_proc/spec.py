"""What the supervisor hands an agent process at spawn (pickled through the forkserver, never on argv)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Imported here, so the forkserver's preload (agent_proc.main imports this module) has the schema and pydantic
# loaded: unpickling a spec in an agent costs no import.
from llmling.config.schema import AgentConfig


@dataclass(frozen=True, slots=True)
class AgentSpec:
    name: str
    # The agent's validated config, as the supervisor resolved it (for a `local/<name>` model, `model` is
    # already the litellm model string of the embedded model's server). Read-only in the agent process.
    config: AgentConfig
    socket_path: str
    # Invariant: known only to the supervisor and this agent's process; proves the connection is this agent.
    token: str
    # The config file's folder: importable for callbacks and tools.
    base_dir: str
    # Set by the supervisor for `local/<name>` models: where the embedded model serves.
    api_base: str | None = None
    # None: the process logs nothing (library use without llmling.enable_logging()).
    log_level: str | None = "INFO"
    # The process's environment on top of the forkserver's (the allow-listed base): the allow-list as the
    # supervisor has it now, the variables this agent's config names, its `env:` (supervisor/environment.py).
    env: dict[str, str] = field(default_factory=dict)
    # The conversation to resume ({"role", "content"} messages, oldest first), from the supervisor's history.
    history: list[dict[str, Any]] = field(default_factory=list)
