"""The environment of every process the supervisor starts: an allow-list, plus what each agent's config names.

Agent processes, the forkserver and the resource tracker never inherit the supervisor's environment as a
whole: it holds every agent's keys and the webhook secrets. The forkserver and the resource tracker get the
base environment (the allow-list only); each agent's process gets the base, the variables its own config
names, and its `env:` values:

- named: `api_key_env`; the provider variables of its `model` (`OPENAI_API_KEY` for `openai/…`, from
  `llmling.config.providers`; not for `local/` models or when `api_key_env` is set); the `${VAR}`s of its
  section of the config (outside its triggers, which run in the supervisor); the names in its MCP servers'
  `env`; and `env_passthrough`.
- `env:` sets explicit values (last, so they win).

A variable the supervisor does not have is simply absent. Webhook `secret_env`s are read by the supervisor
only and reach no agent.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from llmling.config import AgentConfig, StdioServerConfig
from llmling.config.providers import provider_env
from llmling.logs import add_environment_secrets, add_secrets, looks_secret

# Variables every process of the system may see: locale, paths, proxies, CA bundles, the interpreter's own
# settings. None of them is a secret. (A proxy URL may carry a password; proxies must reach agents anyway.)
ALLOWED = frozenset(
    {
        "PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LANG", "LANGUAGE", "TZ", "TZDIR",
        "TMPDIR", "TEMP", "TMP", "COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR",
        "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "no_proxy",
        "all_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS", "VIRTUAL_ENV", "CONDA_PREFIX", "LD_LIBRARY_PATH",
    }
)  # fmt: skip
# Prefixes of allowed names: locale categories, XDG base directories, the interpreter's settings
# (PYTHONPATH, ...), and llmling's own (LLMLING_SOCKET; the test tag of llmling.testing).
ALLOWED_PREFIXES = ("LC_", "XDG_", "PYTHON", "LLMLING_")


def allowed(name: str) -> bool:
    return name in ALLOWED or name.startswith(ALLOWED_PREFIXES)


def base_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The allow-listed part of `environ` (default: this process's environment)."""
    source = os.environ if environ is None else environ
    return {name: value for name, value in source.items() if allowed(name)}


def named_variables(agent: AgentConfig) -> set[str]:
    """The variables `agent`'s own config names (see the module's docstring)."""
    names = set(agent.env_passthrough) | set(agent.referenced_env)
    if agent.api_key_env:
        names.add(agent.api_key_env)
    elif agent.model and not agent.local_model:
        names.update(provider_env(agent.model))
    for server in agent.mcp_servers:
        if isinstance(server, StdioServerConfig):
            names.update(server.env)
    return names


def agent_environment(agent: AgentConfig, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment of `agent`'s process: the base, the variables its config names, its `env:`."""
    source = os.environ if environ is None else environ
    env = base_environment(source)
    env.update({name: source[name] for name in sorted(named_variables(agent)) if name in source})
    env.update(agent.env)
    return env


def register_secrets(agent: AgentConfig, environ: Mapping[str, str] | None = None) -> None:
    """Mask, in this process's log lines, the values `agent`'s config uses as secrets: its key variables, its
    webhooks' `secret_env`, its MCP servers' `env` values, and every variable whose name looks secret."""
    source = os.environ if environ is None else environ
    names = [name for name in named_variables(agent) if looks_secret(name) or name == agent.api_key_env]
    names += [trigger.secret_env for trigger in agent.triggers if getattr(trigger, "secret_env", None)]
    add_environment_secrets(source, names)
    add_secrets(
        value
        for server in agent.mcp_servers
        if isinstance(server, StdioServerConfig)
        for value in server.env.values()
    )
