"""The run an agent process is serving, as seen by its callback and its tools.

`current_run` is set by the serve loop around each run; tasks and worker threads started during the run
inherit it (asyncio copies context variables into tasks, `llmling.user_code.call` into threads), so several
concurrent runs each see their own. `context_parameter` finds the parameter of a callback or tool annotated
with `llmling.RunContext`, the one the run context is passed to.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from llmling.context import RunContext

current_run: ContextVar[RunContext | None] = ContextVar("llmling_current_run", default=None)


def is_run_context(annotation: Any) -> bool:
    """Whether `annotation` is RunContext, `RunContext | None` or `Annotated[RunContext, ...]`."""
    if annotation is RunContext:
        return True
    if isinstance(annotation, str):  # left as text (a name get_type_hints could not resolve)
        text = re.sub(r"^(?:typing\.)?Optional\[(.*)\]$", r"\1", annotation.strip())
        members = [part.strip() for part in text.split("|") if part.strip() != "None"]
        return len(members) == 1 and members[0].rsplit(".", 1)[-1] == "RunContext"
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return is_run_context(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return len(members) == 1 and is_run_context(members[0])
    return False


def context_parameter(function: Callable[..., Any]) -> inspect.Parameter | None:
    """The parameter of `function` annotated with RunContext, if any."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return None
    try:
        hints = typing.get_type_hints(function, include_extras=True)
    except Exception:
        hints = {}  # unresolvable annotations: judged by their text
    for parameter in signature.parameters.values():
        if is_run_context(hints.get(parameter.name, parameter.annotation)):
            return parameter
    return None


__all__ = ["context_parameter", "current_run", "is_run_context"]
