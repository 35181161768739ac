"""The model ↔ tool loop: ask the model, run the tools it calls, give it their results, until it answers.

Bounded by `max_rounds`: after that many rounds of tool calls the model is asked once more with
`tool_choice: "none"`; if it still calls tools, the run fails with ToolRoundsExceeded (the agent keeps serving).
Tools of one round run concurrently. A tool's failure goes back to the model as the `tool` message's content
(`Error: ...`); it never fails the run. A model call that fails (a ModelError, after its own retries and within
its own deadline: agent_proc/model_call.py) fails the run.

Streaming: every round streams its text as it comes (`on_text`), tool calls are accumulated from the deltas.
The reply's content is the final round's text.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from llmling.agent_proc.reply import OnText
from llmling.agent_proc.tools import ToolBox

Messages = list[dict[str, Any]]


@dataclass(slots=True)
class Round:
    """One model answer: its text, the tool calls it asked for (OpenAI shape), its token usage."""

    content: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


# complete(messages, tools, tool_choice, on_text) -> Round
Complete = Callable[[Messages, list[dict[str, Any]], str | None, OnText | None], Awaitable[Round]]


class ToolRoundsExceeded(Exception):
    """The model kept calling tools after `max_tool_rounds` rounds."""


@dataclass(slots=True)
class LoopResult:
    content: str
    prompt_tokens: int | None
    completion_tokens: int | None
    tool_calls: int
    rounds: int


async def run_tool_loop(
    complete: Complete, messages: Messages, toolbox: ToolBox, max_rounds: int, on_text: OnText | None
) -> LoopResult:
    conversation = list(messages)
    specs = toolbox.specs()
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    calls = 0
    for index in range(max_rounds + 1):
        last = index == max_rounds
        answer = await complete(conversation, specs, "none" if last else None, on_text)
        prompt_tokens = _add(prompt_tokens, answer.prompt_tokens)
        completion_tokens = _add(completion_tokens, answer.completion_tokens)
        if not answer.tool_calls:
            return LoopResult(answer.content, prompt_tokens, completion_tokens, calls, index + 1)
        if last:
            raise ToolRoundsExceeded(
                f"the model still called tools after max_tool_rounds={max_rounds} rounds "
                f"({', '.join(call['function']['name'] for call in answer.tool_calls)})"
            )
        calls_asked = answer.tool_calls
        conversation.append({"role": "assistant", "content": answer.content or None, "tool_calls": calls_asked})
        results = await asyncio.gather(
            *(toolbox.call(call["function"]["name"], call["function"].get("arguments")) for call in calls_asked)
        )
        calls += len(answer.tool_calls)
        for call, (text, _failed) in zip(answer.tool_calls, results, strict=True):
            conversation.append(
                {"role": "tool", "tool_call_id": call["id"], "name": call["function"]["name"], "content": text}
            )
    raise AssertionError("unreachable")  # pragma: no cover


def _add(total: int | None, value: int | None) -> int | None:
    if value is None:
        return total
    return value if total is None else total + value


class ToolCallAccumulator:
    """Rebuilds complete tool calls from streamed `delta.tool_calls` fragments (keyed by their index)."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, Any]] = {}

    def feed(self, fragments: Any) -> None:
        for position, fragment in enumerate(fragments or ()):
            index = _get(fragment, "index")
            index = position if index is None else index
            call = self._calls.setdefault(
                index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
            )
            if _get(fragment, "id"):
                call["id"] = _get(fragment, "id")
            function = _get(fragment, "function")
            if function is not None:
                name = _get(function, "name")
                if name and name != call["function"]["name"]:  # some providers repeat the whole name
                    call["function"]["name"] += name
                if _get(function, "arguments"):
                    call["function"]["arguments"] += _get(function, "arguments")

    def calls(self) -> list[dict[str, Any]]:
        out = []
        for index in sorted(self._calls):
            call = self._calls[index]
            call["id"] = call["id"] or f"call_{index}"
            out.append(call)
        return out


def _get(item: Any, key: str) -> Any:
    return item.get(key) if isinstance(item, dict) else getattr(item, key, None)
