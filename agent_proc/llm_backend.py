"""An LLM agent: chat completions through litellm, streamed when someone listens."""

from __future__ import annotations

import contextlib
import os
import urllib.parse
from typing import Any

from llmling.agent_proc.model_call import CallLimits, call_model
from llmling.agent_proc.reply import OnText, Reply
from llmling.agent_proc.tool_loop import Round, ToolCallAccumulator, run_tool_loop
from llmling.agent_proc.tools import ToolBox
from llmling.config.providers import check_key, key_variable
from llmling.config.schema import AgentConfig

# Any non-empty key: the embedded model's server accepts every key.
_LOCAL_KEY = "sk-llmling-local"
# Sent to a server of your own (`api_base`) when no key is configured: OpenAI-compatible clients refuse to send
# a request without one, and such servers usually accept any.
_NO_KEY = "sk-llmling-no-key"
# `model_settings` that are llmling's own limits (agent_proc/model_call.py), not arguments of the call.
_LIMIT_SETTINGS = ("timeout", "num_retries")


# What litellm 1.106 imports lazily on an agent's first call (found by diffing sys.modules around first calls):
# ~3 s on 2 cores, enough to make a first call miss a short `model_settings.timeout`. The OpenAI client's `chat`
# property imports all of `openai.resources`; litellm's error mapping imports fastapi and its proxy types.
_FIRST_CALL_IMPORTS = (
    "openai.resources",
    "fastapi.exceptions",
    "litellm._service_logger",
    "litellm.litellm_core_utils.exception_mapping_utils",
    "litellm.llms.openai.openai",
    "litellm.llms.openai.chat.gpt_audio_transformation",
    "litellm.llms.vertex_ai.vertex_ai_partner_models.anthropic.transformation",
    "litellm.proxy._types",
    "litellm.proxy.guardrails.exception_utils",
    "litellm.proxy.openai_files_endpoints.common_utils",
    "litellm.proxy.types_utils.utils",
)


def warm() -> None:
    """Resolve litellm's lazy imports once (in the forkserver), so a forked agent's first call is fast."""
    import importlib

    import litellm

    for module in _FIRST_CALL_IMPORTS:
        with contextlib.suppress(ImportError):  # optional parts (fastapi) may be missing
            importlib.import_module(module)
    litellm.get_llm_provider("openai/warm-up", api_base="http://127.0.0.1:1/v1")


def call_arguments(config: AgentConfig, api_base: str | None) -> dict[str, Any]:
    """The keyword arguments of `litellm.acompletion` for this agent, without messages.

    `api_base` is given by the supervisor for a model it serves itself (the embedded model); the config's
    `model` is then already the litellm model string for that server. The key follows llmling/config/providers.py.
    """
    settings = config.model_settings
    arguments: dict[str, Any] = {
        key: value for key, value in settings if value is not None and key not in _LIMIT_SETTINGS
    }
    arguments["model"] = config.model
    # Retries are llmling's (model_call.py): litellm's and the OpenAI SDK's own are off.
    arguments["max_retries"] = 0
    arguments["num_retries"] = 0
    key_env = config.api_key_env
    if api_base:
        arguments["api_base"] = api_base
        arguments["api_key"] = _LOCAL_KEY
    elif config.api_base:
        arguments["api_base"] = config.api_base
        variable = key_variable(config.model, key_env)
        if not (variable and os.environ.get(variable)):
            arguments["api_key"] = _NO_KEY
    if key_env:
        arguments["api_key"] = os.environ.get(key_env, "")
    return arguments


def call_limits(config: AgentConfig, api_base: str | None) -> CallLimits:
    """The model call's deadline and retries, and what its errors name."""
    settings = config.model_settings
    return CallLimits(
        model=str(config.model),
        api_base=_shown(api_base or config.api_base),
        timeout=float(settings.timeout),
        num_retries=int(settings.num_retries),
    )


def _shown(url: str | None) -> str | None:
    """`url` as errors may show it: without a `user:password@` part."""
    if not url or "@" not in url:
        return url
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=host))


class LLMBackend:
    """Chat completions through litellm; with tools, the model ↔ tool loop (agent_proc/tool_loop.py).

    The reply's `usage` sums every model round: `prompt_tokens`, `completion_tokens`, `total_tokens`, and
    `cost` in USD from litellm's cost map (None when the model is not in it), plus `tool_calls` with tools.
    """

    def __init__(self, config: AgentConfig, api_base: str | None, toolbox: ToolBox | None = None) -> None:
        self._arguments = call_arguments(config, api_base)
        self._limits = call_limits(config, api_base)
        self._api_key_env = config.api_key_env
        self._toolbox = toolbox
        self._max_tool_rounds = config.max_tool_rounds

    async def init(self) -> None:
        """Fails (MissingAPIKey, naming the variable) when the model needs a key that is not set."""
        import litellm

        check_key(self._limits.model, self._limits.api_base, self._api_key_env)
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
        """One model call (streamed when `on_text` listens), under the deadline and retries of model_call.py."""
        extra: dict[str, Any] = {}
        if tools:
            extra["tools"] = tools
            if tool_choice is not None:
                extra["tool_choice"] = tool_choice
        if on_text is None:
            return await call_model(self._limits, lambda: self._answer(messages, extra))
        streamed = False

        def emit(text: str) -> None:
            nonlocal streamed
            streamed = True
            on_text(text)

        return await call_model(self._limits, lambda: self._stream(messages, extra, emit), lambda: streamed)

    async def _answer(self, messages: list[dict[str, Any]], extra: dict[str, Any]) -> Round:
        import litellm

        response = await litellm.acompletion(messages=messages, **extra, **self._arguments)
        message = response.choices[0].message
        calls = ToolCallAccumulator()
        calls.feed(getattr(message, "tool_calls", None))
        return Round(message.content or "", calls.calls(), *_tokens(getattr(response, "usage", None)))

    async def _stream(self, messages: list[dict[str, Any]], extra: dict[str, Any], on_text: OnText) -> Round:
        import litellm

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
