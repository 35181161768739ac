"""Which environment variables a model's provider reads, by litellm's provider naming (without importing it).

The one place that answers "which variable holds the key for this model": the supervisor passes these
variables to the agent that uses the model (supervisor/environment.py), and a missing key is reported by name.
A provider that is not listed here needs no variable from us (e.g. `ollama/`), or its user names them with
`api_key_env` / `env_passthrough`.
"""

from __future__ import annotations

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

# Model names litellm maps to a provider without a prefix (`gpt-4o-mini` is OpenAI's).
_BARE_PREFIXES = (
    (("gpt-", "o1", "o3", "o4", "chatgpt-", "text-embedding-", "davinci", "babbage"), "openai"),
    (("claude-",), "anthropic"),
)


def provider(model: str) -> str | None:
    """The litellm provider of `model` (`openai/gpt-4o` → `openai`), None when it cannot be told."""
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


def key_env(model: str) -> str | None:
    """The variable that holds the API key for `model` (`OPENAI_API_KEY` for `openai/...`), None when its
    provider needs none or is not known here."""
    names = provider_env(model)
    return names[0] if names else None
