"""One agent's state inside its process: its backend, its conversation, its components.

Conversation history with concurrent runs (`concurrency` > 1): a run sees the history as of its start (the
runs that completed before it started, never the ones still in flight beside it); its user/assistant pair is
appended when it completes, so pairs are in completion order and never interleave. With `concurrency: 1`
(the default) this is the plain turn-by-turn conversation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from llmling.agent_proc.capabilities import Capabilities
from llmling.agent_proc.reply import Backend, OnText, Reply
from llmling.agent_proc.spec import AgentSpec
from llmling.agent_proc.tools import ToolBox
from llmling.ipc.messages import ComponentState

OnComponent = Callable[[str, ComponentState], None]


def make_backend(spec: AgentSpec, toolbox: ToolBox | None = None) -> Backend:
    if spec.config.callback is not None:
        from llmling.agent_proc.callback_backend import CallbackBackend

        return CallbackBackend(spec.config.callback, spec.base_dir)
    from llmling.agent_proc.llm_backend import LLMBackend

    return LLMBackend(spec.config, spec.api_base, toolbox)


class AgentRuntime:
    """Serves the agent's runs (up to `concurrency` at once, see the module docstring); its conversation
    history lives here, in the agent's process."""

    def __init__(self, spec: AgentSpec) -> None:
        self.spec = spec
        # Tools, MCP servers and knowledge: their init components, the ToolBox the backend offers the model.
        self.capabilities = Capabilities(spec)
        self.backend = make_backend(spec, self.capabilities.toolbox)
        # Invariant: at most `max_messages` past messages, starting with a user message; seeded from the
        # supervisor's history when the process is (re)started. Only `run` appends, one whole pair at a time
        # with no await in between, so concurrent runs never split a pair.
        self.max_messages: int = spec.config.history.max_messages
        self.history: list[dict[str, Any]] = list(spec.history)
        self._trim_history()

    def components(self) -> dict[str, Callable[[], Awaitable[None]]]:
        """Named init steps: the backend, then `tools`, `mcp:<server>`, `knowledge:<source>`."""
        return {"backend": self.backend.init, **self.capabilities.components()}

    async def init(self, on_component: OnComponent, parallel: bool = True) -> None:
        """Initialise every component (concurrently unless `parallel` is False).

        Raises ComponentError naming the first component that failed.
        """
        steps = self.components()
        if parallel:
            try:
                async with asyncio.TaskGroup() as group:
                    for name, step in steps.items():
                        group.create_task(_init_one(name, step, on_component))
            except BaseExceptionGroup as group_error:
                raise group_error.exceptions[0] from None
        else:
            for name, step in steps.items():
                await _init_one(name, step, on_component)
        self.capabilities.finish()

    async def close(self) -> None:
        """Release what the components hold (MCP sessions and their server processes). Never raises."""
        await self.capabilities.close()

    def _trim_history(self) -> None:
        excess = len(self.history) - self.max_messages
        while excess > 0 and excess < len(self.history) and self.history[excess].get("role") != "user":
            excess += 1  # the context starts with a user message
        if excess > 0:
            del self.history[:excess]

    def _messages(self, prompt: str) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        system = "\n\n".join(
            part for part in (self.spec.config.system_prompt, self.capabilities.system_context()) if part
        )
        if system:
            messages.append({"role": "system", "content": system})
        messages.extend(self.history)
        messages.append({"role": "user", "content": prompt})
        return messages

    async def run(self, prompt: str, on_text: OnText | None = None) -> tuple[Reply, float]:
        """One turn of the conversation; returns the reply and its elapsed seconds.

        The context is the history as of now; the turn joins the history when it completes (a failed or
        cancelled turn leaves no trace in it).
        """
        started = time.perf_counter()
        reply = await self.backend.run(self._messages(prompt), on_text)
        self.history.append({"role": "user", "content": prompt})
        self.history.append({"role": "assistant", "content": reply.content})
        self._trim_history()
        return reply, time.perf_counter() - started


class ComponentError(Exception):
    def __init__(self, component: str, cause: BaseException) -> None:
        super().__init__(f"component {component!r} failed: {type(cause).__name__}: {cause}")
        self.component = component


async def _init_one(name: str, step: Callable[[], Awaitable[None]], on_component: OnComponent) -> None:
    on_component(name, "starting")
    try:
        await step()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        on_component(name, "failed")
        raise ComponentError(name, exc) from exc
    on_component(name, "ready")
