"""Which environment variables a model's provider reads, and when a missing key fails the start.

The one table, by litellm's provider naming (without importing litellm): the supervisor passes an agent the
variables of its model's provider (supervisor/environment.py), the agent's `backend` component checks the key
at start, and `llmling validate` checks it too.

Rules for the key (first match wins):
1. `api_key_env: VAR` set: VAR holds the key and must be set (non-empty), whatever the provider.
2. `local/<name>` (the embedded model), or an `api_base` (a server of your own, e.g. vLLM, Ollama,
   llama.cpp): no key is required; the provider's variable is sent when it is set.
3. A provider whose key is checked (`KEY_CHECKED`: `openai/...`, `anthropic/...`, a bare `gpt-...`/`claude-...`,
   ...): its key variable (the first of its variables) must be set.
4. Any other provider (bedrock, vertex_ai, ollama, ...): not checked; litellm finds its credentials itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Protocol

from llmling.errors import MissingAPIKey

LOCAL_PREFIX = "local/"

# litellm's provider prefix → the variables it reads for that provider, the one that holds the key first.
PROVIDER_ENV: dict[str, tuple[str, ...]] = {
    "openai": ("OPENAI_API_KEY", "OPENAI_API_BASE", "OPENAI_BASE_URL", "OPENAI_ORGANIZATION"),
    "text-completion-openai": ("OPENAI_API_KEY", "OPENAI_API_BASE", "OPENAI_BASE_URL", "OPENAI_ORGANIZATION"),
    "anthropic": ("ANTHROPIC_API_KEY", "ANTHROPIC_API_BASE", "ANTHROPIC_BASE_URL"),
    "azure": ("AZURE_API_KEY", "AZURE_OPENAI_API_KEY", "AZURE_AD_TOKEN", "AZURE_API_BASE", "AZURE_API_VERSION"),
    "azure_ai": ("AZURE_AI_API_KEY", "AZURE_AI_API_BASE"),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    "vertex_ai": ("GOOGLE_APPLICATION_CREDENTIALS", "VERTEXAI_PROJECT", "VERTEXAI_LOCATION"),
    "bedrock": (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION_NAME",
        "AWS_DEFAULT_REGION",
        "AWS_PROFILE",
    ),
    "mistral": ("MISTRAL_API_KEY",),
    "codestral": ("CODESTRAL_API_KEY",),
    "groq": ("GROQ_API_KEY",),
    "cohere": ("COHERE_API_KEY", "CO_API_KEY"),
    "cohere_chat": ("COHERE_API_KEY", "CO_API_KEY"),
    "deepseek": ("DEEPSEEK_API_KEY",),
    "openrouter": ("OPENROUTER_API_KEY", "OR_API_KEY"),
    "xai": ("XAI_API_KEY",),
    "perplexity": ("PERPLEXITYAI_API_KEY", "PERPLEXITY_API_KEY"),
    "together_ai": ("TOGETHERAI_API_KEY", "TOGETHER_API_KEY", "TOGETHER_AI_API_KEY", "TOGETHER_AI_TOKEN"),
    "fireworks_ai": ("FIREWORKS_AI_API_KEY", "FIREWORKS_API_KEY", "FIREWORKSAI_API_KEY", "FIREWORKS_AI_TOKEN"),
    "deepinfra": ("DEEPINFRA_API_KEY",),
    "huggingface": ("HUGGINGFACE_API_KEY", "HF_TOKEN"),
    "replicate": ("REPLICATE_API_KEY", "REPLICATE_API_TOKEN"),
    "cerebras": ("CEREBRAS_API_KEY",),
    "sambanova": ("SAMBANOVA_API_KEY",),
    "nvidia_nim": ("NVIDIA_NIM_API_KEY",),
    "dashscope": ("DASHSCOPE_API_KEY",),
    "voyage": ("VOYAGE_API_KEY",),
    "watsonx": ("WATSONX_API_KEY", "WX_API_KEY", "WATSONX_TOKEN", "WATSONX_URL", "WATSONX_PROJECT_ID"),
    "litellm_proxy": ("LITELLM_PROXY_API_KEY", "LITELLM_PROXY_API_BASE"),
    "hosted_vllm": ("HOSTED_VLLM_API_KEY",),
}

# Providers whose key variable must be set (rule 3); the others authenticate in ways of their own.
KEY_CHECKED = frozenset(
    {
        "openai",
        "anthropic",
        "gemini",
        "mistral",
        "groq",
        "deepseek",
        "openrouter",
        "xai",
        "cohere",
        "together_ai",
        "fireworks_ai",
        "perplexity",
        "cerebras",
    }
)

# Model names litellm maps to a provider without a prefix (`gpt-4o-mini` is OpenAI's).
_BARE_PREFIXES = (
    (("gpt-", "chatgpt-", "o1", "o3", "o4", "text-embedding-", "davinci", "babbage"), "openai"),
    (("claude-",), "anthropic"),
)


def provider(model: str) -> str | None:
    """The litellm provider of `model` (`openai/gpt-4o` -> `openai`), None when it cannot be told."""
    prefix, slash, _ = model.partition("/")
    if slash:
        return prefix
    for starts, name in _BARE_PREFIXES:
        if model.startswith(starts):
            return name
    return None


def provider_env(model: str) -> tuple[str, ...]:
    """Every variable the provider of `model` reads (key first); empty when none is known."""
    name = provider(model)
    return PROVIDER_ENV.get(name, ()) if name else ()


def key_variable(model: str, api_key_env: str | None = None) -> str | None:
    """The environment variable that holds this model's key: `api_key_env`, else the provider's, else None."""
    if api_key_env:
        return api_key_env
    name = provider(model)
    if name not in KEY_CHECKED:
        return None  # it authenticates in a way of its own (AWS, Google credentials, none)
    return PROVIDER_ENV[name][0]


def required_key(model: str, api_base: str | None = None, api_key_env: str | None = None) -> str | None:
    """The variable that must be set for this model to start (rules above), None when none must be."""
    if api_key_env:
        return api_key_env
    if model.startswith(LOCAL_PREFIX) or api_base:
        return None
    return key_variable(model)


def check_key(
    model: str,
    api_base: str | None = None,
    api_key_env: str | None = None,
    environ: Mapping[str, str] = os.environ,
) -> None:
    """Raise MissingAPIKey naming the variable when this model's required key is not set."""
    variable = required_key(model, api_base, api_key_env)
    if variable and not environ.get(variable):
        raise MissingAPIKey(variable, model)


class ModelAgent(Protocol):
    """What the key check reads of an agent's config (AgentConfig has it)."""

    model: str | None
    api_base: str | None
    api_key_env: str | None


def missing_keys(agents: Mapping[str, ModelAgent], environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """`agents.<name>.model` -> "VAR is not set (model M)" for every agent whose required key is not set."""
    missing = {}
    for name, agent in agents.items():
        if agent.model is None:
            continue
        try:
            check_key(agent.model, agent.api_base, agent.api_key_env, environ)
        except MissingAPIKey as exc:
            missing[f"agents.{name}.model"] = str(exc)
    return missing
