"""An agent without an LLM: a Python function called with the prompt, returning the reply."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from llmling.agent_proc.reply import OnText, Reply
from llmling.importing import import_path


class CallbackBackend:
    """Calls `module:function(prompt)`; an async function is awaited.

    A sync function runs on the agent's own event loop: it should return quickly (make long work async).
    """

    def __init__(self, path: str, base_dir: str) -> None:
        self._path = path
        self._base_dir = base_dir
        self._function: Callable[..., Any] | None = None

    async def init(self) -> None:
        self._function = import_path(self._path, self._base_dir)

    async def run(self, messages: list[dict[str, Any]], on_text: OnText | None) -> Reply:
        assert self._function is not None, "init() first"
        result = self._function(messages[-1]["content"])
        if inspect.isawaitable(result):
            result = await result
        return Reply(content="" if result is None else str(result))
