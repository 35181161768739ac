"""An agent without an LLM: a Python function called with the prompt, returning the reply."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from llmling.agent_proc.reply import OnText, Reply
from llmling.agent_proc.run_context import context_parameter, current_run
from llmling.importing import import_path
from llmling.user_code import call as call_user_code


class CallbackBackend:
    """Calls `module:function(prompt)`; an async function is awaited on the agent's loop, a sync one runs on a
    worker thread (so a slow one never blocks the loop that answers the heartbeat and serves other runs).

    A parameter annotated with `llmling.RunContext` gets the current run's context (id, attempt, ...).
    """

    def __init__(self, path: str, base_dir: str) -> None:
        self._path = path
        self._base_dir = base_dir
        self._function: Callable[..., Any] | None = None
        # The parameter that receives the RunContext (None: the function does not ask for it).
        self._context: inspect.Parameter | None = None

    async def init(self) -> None:
        self._function = import_path(self._path, self._base_dir)
        self._context = context_parameter(self._function)

    async def run(self, messages: list[dict[str, Any]], on_text: OnText | None) -> Reply:
        assert self._function is not None, "init() first"
        args: list[Any] = [messages[-1]["content"]]
        kwargs: dict[str, Any] = {}
        if self._context is not None:
            if self._context.kind is inspect.Parameter.POSITIONAL_ONLY:
                args.append(current_run.get())
            else:
                kwargs[self._context.name] = current_run.get()
        result = await call_user_code(self._function, *args, settle=True, **kwargs)
        return Reply(content="" if result is None else str(result))
