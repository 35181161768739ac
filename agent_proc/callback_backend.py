"""An agent without an LLM: a Python function called with the prompt, returning the reply."""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from typing import Any

from llmling.agent_proc.reply import OnText, Reply


def import_path(path: str, base_dir: str) -> Callable[..., Any]:
    """Resolve `module:attr` with `base_dir` importable. Raises ImportError/AttributeError naming the path."""
    if base_dir not in sys.path:
        sys.path.insert(0, base_dir)
    module_name, _, attr = path.partition(":")
    module = importlib.import_module(module_name)
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{path} is not callable")
    return target


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
