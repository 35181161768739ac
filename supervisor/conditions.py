"""Connection conditions and transforms, compiled from the config (or given from Python) into callables.

They run in the supervisor, on the forwarding task. A sync function (a `module:function` or a Python lambda)
runs on a worker thread, so a slow one never blocks the supervisor's loop (its routing, heartbeats and
control socket); an async one is awaited on the loop. `word_match` is evaluated inline (it is cheap).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from llmling.config import CallableCondition, WordMatch
from llmling.importing import import_path
from llmling.user_code import call as call_user_code

Predicate = Callable[[str], Awaitable[bool]]
Transform = Callable[[str], Awaitable[str]]
ConditionSpec = WordMatch | CallableCondition | Callable[[str], Any] | None


def word_match(condition: WordMatch) -> Predicate:
    words = condition.words if condition.case_sensitive else [word.lower() for word in condition.words]
    combine = any if condition.mode == "any" else all

    async def matches(content: str) -> bool:
        text = content if condition.case_sensitive else content.lower()
        return combine(word in text for word in words)

    return matches


def predicate(condition: ConditionSpec, base_dir: str) -> Predicate | None:
    """A predicate over a message's content: from a config condition, or any sync/async callable."""
    if condition is None:
        return None
    if isinstance(condition, WordMatch):
        return word_match(condition)
    function = import_path(condition.path, base_dir) if isinstance(condition, CallableCondition) else condition

    async def call(content: str) -> bool:
        return bool(await call_user_code(function, content))

    return call


def transform(path_or_function: str | Callable[[str], Any] | None, base_dir: str) -> Transform | None:
    """A content rewrite: from a `module:function` path, or any sync/async callable."""
    if path_or_function is None:
        return None
    if isinstance(path_or_function, str):
        function = import_path(path_or_function, base_dir)
    else:
        function = path_or_function

    async def call(content: str) -> str:
        return str(await call_user_code(function, content))

    return call
