"""An LLM agent: chat completions through litellm, streamed when someone listens."""

from __future__ import annotations

import os
from typing import Any

from llmling.agent_proc.reply import OnText, Reply

LOCAL_PREFIX = "local/"
# Any non-empty key: the embedded model's server accepts every key.
_LOCAL_KEY = "sk-llmling-local"


def warm() -> None:
    """Resolve litellm's lazy imports once (in the forkserver), so a forked agent's first call is fast."""
    import litellm
    from litellm.llms.openai.openai import OpenAIChatCompletion  # noqa: F401

    litellm.get_llm_provider("openai/warm-up", api_base="http://127.0.0.1:1/v1")


def call_arguments(config: dict[str, Any], api_base: str | None) -> dict[str, Any]:
    """The keyword arguments of `litellm.acompletion` for this agent, without messages."""
    model: str = config["model"]
    arguments: dict[str, Any] = {k: v for k, v in config.get("model_settings", {}).items() if v is not None}
    if model.startswith(LOCAL_PREFIX):
        arguments["model"] = "openai/" + model[len(LOCAL_PREFIX) :]
        arguments["api_base"] = api_base
        arguments["api_key"] = _LOCAL_KEY
    else:
        arguments["model"] = model
        if config.get("api_base"):
            arguments["api_base"] = config["api_base"]
    key_env = config.get("api_key_env")
    if key_env:
        arguments["api_key"] = os.environ.get(key_env, "")
    return arguments


class LLMBackend:
    def __init__(self, config: dict[str, Any], api_base: str | None) -> None:
        self._arguments = call_arguments(config, api_base)

    async def init(self) -> None:
        import litellm

        litellm.suppress_debug_info = True

    async def run(self, messages: list[dict[str, Any]], on_text: OnText | None) -> Reply:
        import litellm

        if on_text is None:
            response = await litellm.acompletion(messages=messages, **self._arguments)
            content = response.choices[0].message.content or ""
            return Reply(content=content, usage=_usage(getattr(response, "usage", None)))
        parts: list[str] = []
        usage: Any = None
        stream = await litellm.acompletion(
            messages=messages, stream=True, stream_options={"include_usage": True}, **self._arguments
        )
        async for chunk in stream:
            if getattr(chunk, "usage", None):
                usage = chunk.usage
            if not chunk.choices:
                continue
            text = chunk.choices[0].delta.content
            if text:
                parts.append(text)
                on_text(text)
        return Reply(content="".join(parts), usage=_usage(usage))


def _usage(usage: Any) -> dict[str, Any]:
    if usage is None:
        return {}
    return {
        "prompt_tokens": getattr(usage, "prompt_tokens", None),
        "completion_tokens": getattr(usage, "completion_tokens", None),
        "total_tokens": getattr(usage, "total_tokens", None),
    }
