"""llmling: LLM agents, one uvloop process each, under a supervisor that routes their messages.

The public API is imported lazily, so `llmling.cli` (a light client) never pays for pydantic or the supervisor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Agent": "llmling.api",
    "AgentPool": "llmling.api",
    "Connection": "llmling.api",
    "ChatMessage": "llmling.messages",
    "Usage": "llmling.messages",
    "RunContext": "llmling.context",
    "AgentRunError": "llmling.errors",
    "ConfigError": "llmling.errors",
    "LLMlingError": "llmling.errors",
    "StartupError": "llmling.errors",
    "UnknownAgentError": "llmling.errors",
    "MissingAPIKey": "llmling.errors",
    "ModelAuthError": "llmling.errors",
    "ModelBadRequest": "llmling.errors",
    "ModelError": "llmling.errors",
    "ModelRateLimited": "llmling.errors",
    "ModelServerError": "llmling.errors",
    "ModelTimeout": "llmling.errors",
    "ModelUnreachable": "llmling.errors",
    "SystemConfig": "llmling.config",
    "AgentConfig": "llmling.config",
    "load_config": "llmling.config",
    "enable_logging": "llmling.logs",
}

__all__ = [
    "Agent",
    "AgentConfig",
    "AgentPool",
    "AgentRunError",
    "ChatMessage",
    "ConfigError",
    "Connection",
    "LLMlingError",
    "MissingAPIKey",
    "ModelAuthError",
    "ModelBadRequest",
    "ModelError",
    "ModelRateLimited",
    "ModelServerError",
    "ModelTimeout",
    "ModelUnreachable",
    "RunContext",
    "StartupError",
    "SystemConfig",
    "UnknownAgentError",
    "Usage",
    "enable_logging",
    "load_config",
]

if TYPE_CHECKING:
    from llmling.api import Agent, AgentPool, Connection
    from llmling.config import AgentConfig, SystemConfig, load_config
    from llmling.context import RunContext
    from llmling.errors import (
        AgentRunError,
        ConfigError,
        LLMlingError,
        MissingAPIKey,
        ModelAuthError,
        ModelBadRequest,
        ModelError,
        ModelRateLimited,
        ModelServerError,
        ModelTimeout,
        ModelUnreachable,
        StartupError,
        UnknownAgentError,
    )
    from llmling.logs import enable_logging
    from llmling.messages import ChatMessage, Usage


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'llmling' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
