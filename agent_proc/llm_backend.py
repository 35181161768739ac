"""An LLM agent: chat completions through litellm, streamed when someone listens."""

from __future__ import annotations

import os
from typing import Any

from llmling.agent_proc.reply import OnText, Reply
from llmling.agent_proc.tool_loop import Round, ToolCallAccumulator, run_tool_loop
from llmling.agent_proc.tools import ToolBox
from llmling.config.schema import AgentConfig

# Any non-empty key: the embedded model's server accepts every key.
_LOCAL_KEY = "sk-llmling-local"


def warm() -> None:
    """Resolve litellm's lazy imports once (in the forkserver), so a forked agent's first call is fast."""
    import litellm
    from litellm.llms.openai.openai import OpenAIChatCompletion  # noqa: F401

    litellm.get_llm_provider("openai/warm-up", api_base="http://127.0.0.1:1/v1")


def call_arguments(config: AgentConfig, api_base: str | None) -> dict[str, Any]:
    """The keyword arguments of `litellm.acompletion` for this agent, without messages.

    `api_base` is given by the supervisor for a model it serves itself (the embedded model); the config's
    `model` is then already the litellm model string for that server.
    """
    arguments: dict[str, Any] = {key: value for key, value in config.model_settings if value is not None}
    arguments["model"] = config.model
    if api_base:
        arguments["api_base"] = api_base
        arguments["api_key"] = _LOCAL_KEY
    elif config.api_base:
        arguments["api_base"] = config.api_base
    key_env = config.api_key_env
    if key_env:
        arguments["api_key"] = os.environ.get(key_env, "")
    return arguments


class LLMBackend:
    """Chat completions through litellm; with tools, the model ↔ tool loop (agent_proc/tool_loop.py).

    The reply's `usage` sums every model round: `prompt_tokens`, `completion_tokens`, `total_tokens`, and
    `cost` in USD from litellm's cost map (None when the model is not in it), plus `tool_calls` with tools.
    """

    def __init__(self, config: AgentConfig, api_base: str | None, toolbox: ToolBox | None = None) -> None:
        self._arguments = call_arguments(config, api_base)
        self._toolbox = toolbox
        self._max_tool_rounds = config.max_tool_rounds

    async def init(self) -> None:
        import litellm

        litellm.suppress_debug_info = True

    async def run(self, messages: list[dict[str, Any]], on_text: OnText | None) -> Reply:
        if self._toolbox is None or not len(self._toolbox):
            answer = await self._complete(messages, [], None, on_text)
            return Reply(content=answer.content, usage=self._usage(answer.prompt_tokens, answer.completion_tokens))
        result = await run_tool_loop(self._complete, messages, self._toolbox, self._max_tool_rounds, on_text)
        usage = self._usage(result.prompt_tokens, result.completion_tokens)
        usage["tool_calls"] = result.tool_calls
        return Reply(content=result.content, usage=usage)

    async def _complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        tool_choice: str | None,
        on_text: OnText | None,
    ) -> Round:
        """One model call (streamed when `on_text` listens)."""
        import litellm

        extra: dict[str, Any] = {}
        if tools:
            extra["tools"] = tools
            if tool_choice is not None:
                extra["tool_choice"] = tool_choice
        if on_text is None:
            response = await litellm.acompletion(messages=messages, **extra, **self._arguments)
            message = response.choices[0].message
            calls = ToolCallAccumulator()
            calls.feed(getattr(message, "tool_calls", None))
            usage = getattr(response, "usage", None)
            return Round(message.content or "", calls.calls(), *_tokens(usage))
        parts: list[str] = []
        usage = None
        calls = ToolCallAccumulator()
        stream = await litellm.acompletion(
            messages=messages, stream=True, stream_options={"include_usage": True}, **extra, **self._arguments
        )
        async for chunk in stream:
            if getattr(chunk, "usage", None):
                usage = chunk.usage
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            text = delta.content
            if text:
                parts.append(text)
                on_text(text)
            calls.feed(getattr(delta, "tool_calls", None))
        return Round("".join(parts), calls.calls(), *_tokens(usage))

    def _usage(self, prompt_tokens: int | None, completion_tokens: int | None) -> dict[str, Any]:
        if prompt_tokens is None and completion_tokens is None:
            return {}
        total = (prompt_tokens or 0) + (completion_tokens or 0)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": total,
            "cost": cost(self._arguments["model"], prompt_tokens or 0, completion_tokens or 0),
        }


def _tokens(usage: Any) -> tuple[int | None, int | None]:
    if usage is None:
        return None, None
    return getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None)


def cost(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    """USD for these tokens from litellm's (bundled) cost map; None when the model is not in it."""
    import litellm

    try:
        prompt_cost, completion_cost = litellm.cost_per_token(
            model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
        )
    except Exception:
        return None
    return prompt_cost + completion_cost
