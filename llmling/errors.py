"""Typed errors raised by library code. Only `llmling.cli` turns them into exit codes."""

from __future__ import annotations


class LLMlingError(Exception):
    """Base class of every error llmling raises on purpose."""


class ConfigError(LLMlingError):
    """A config file is invalid. The message names `file:line` and the key path."""


class StartupError(LLMlingError):
    """The system could not start (an agent failed its init, the socket is taken, ...)."""


class StartupInterrupted(StartupError):
    """A stop was requested (Ctrl+C, SIGTERM, `llmling stop`) before every agent was ready."""


class AgentRunError(LLMlingError):
    """An agent's run failed: its code raised, its model call failed or its process died mid-run.

    `kind`: "error" (the agent's code failed), "crash" (its process died during the run), "timeout"
    (run_timeout), "unavailable" (agent failed/stopped/removed), "busy" (queue full).
    """

    def __init__(self, agent: str, cause: str, kind: str = "error") -> None:
        super().__init__(f"agent {agent!r} failed: {cause}")
        self.agent = agent
        self.cause = cause
        self.kind = kind


class AgentBusyError(AgentRunError):
    """The agent's queue is full: the run was not accepted."""

    def __init__(self, agent: str, cause: str, kind: str = "busy") -> None:
        super().__init__(agent, cause, kind)


class UnknownAgentError(LLMlingError):
    """A request named an agent the system does not have."""
