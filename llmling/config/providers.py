"""Which environment variable holds a model's API key, and when a missing one fails the start.

The one table of provider prefix -> key variable: the agent's `backend` component checks it at start,
`llmling validate` checks it without importing litellm, and the spawner uses it to pass an agent only the
variable its model needs. The names are the ones litellm reads.

Rules (first match wins):
1. `api_key_env: VAR` set: VAR holds the key and must be set (non-empty), whatever the provider.
2. `local/<name>` (the embedded model), or an `api_base` (a server of your own, e.g. vLLM, Ollama,
   llama.cpp): no key is required; the provider's variable is sent when it is set.
3. A provider of the table (`openai/...`, `anthropic/...`, a bare `gpt-...`/`claude-...`): its variable must
   be set.
4. Any other provider (bedrock, vertex_ai, ollama, ...): not checked; litellm finds its credentials itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Protocol

from llmling.errors import MissingAPIKey

LOCAL_PREFIX = "local/"

# litellm provider prefix (the part before the first "/") -> the variable litellm reads the key from.
KEY_VARIABLES: dict[str, str] = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "gemini": "GEMINI_API_KEY",
    "mistral": "MISTRAL_API_KEY",
    "groq": "GROQ_API_KEY",
    "deepseek": "DEEPSEEK_API_KEY",
    "openrouter": "OPENROUTER_API_KEY",
    "xai": "XAI_API_KEY",
    "cohere": "COHERE_API_KEY",
    "together_ai": "TOGETHERAI_API_KEY",
    "fireworks_ai": "FIREWORKS_AI_API_KEY",
    "perplexity": "PERPLEXITYAI_API_KEY",
    "cerebras": "CEREBRAS_API_KEY",
}

# Model names litellm maps to a provider without a prefix.
BARE_PREFIXES: dict[str, str] = {
    "gpt-": "openai",
    "chatgpt-": "openai",
    "o1": "openai",
    "o3": "openai",
    "o4": "openai",
    "claude-": "anthropic",
}


def provider(model: str) -> str | None:
    """The provider of a litellm model string (`openai/gpt-4o-mini` -> openai), None when unknown."""
    if "/" in model:
        return model.split("/", 1)[0]
    return next((name for prefix, name in BARE_PREFIXES.items() if model.startswith(prefix)), None)


def key_variable(model: str, api_key_env: str | None = None) -> str | None:
    """The environment variable that holds this model's key: `api_key_env`, else the provider's, else None."""
    if api_key_env:
        return api_key_env
    name = provider(model)
    return KEY_VARIABLES.get(name) if name else None


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
