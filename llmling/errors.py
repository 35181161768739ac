"""Typed errors raised by library code. Only `llmling.cli` turns them into exit codes."""

from __future__ import annotations

from typing import Literal

# Why a run failed: the agent's code raised ("error"), its process died during the run ("crash"), it ran past
# its run_timeout ("timeout"), the agent cannot take runs (failed, stopped, removed: "unavailable"), or its
# queue is full ("busy").
RunErrorKind = Literal["error", "crash", "timeout", "unavailable", "busy"]


class LLMlingError(Exception):
    """Base class of every error llmling raises on purpose."""


class ConfigError(LLMlingError):
    """A config file is invalid. The message names `file:line` and the key path."""


class StartupError(LLMlingError):
    """The system could not start (an agent failed its init, the socket is taken, ...)."""


class StartupInterrupted(StartupError):
    """A stop was requested (Ctrl+C, SIGTERM, `llmling stop`) before every agent was ready."""


class AgentRunError(LLMlingError):
    """An agent's run failed: its code raised, its model call failed or its process died mid-run."""

    def __init__(self, agent: str, cause: str, kind: RunErrorKind = "error") -> None:
        super().__init__(f"agent {agent!r} failed: {cause}")
        self.agent = agent
        self.cause = cause
        self.kind: RunErrorKind = kind


class AgentBusyError(AgentRunError):
    """The agent's queue is full (`max_queue` runs accepted and not started): the run was not accepted.

    `retry_after` is the slot's estimate, in whole seconds, of when a place may be free.
    """

    def __init__(self, agent: str, queued: int, retry_after: int = 1) -> None:
        super().__init__(agent, f"busy ({queued} queued)", kind="busy")
        self.queued = queued
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"agent {self.agent} is busy ({self.queued} queued)"


class UnknownAgentError(LLMlingError):
    """A request named an agent the system does not have."""
