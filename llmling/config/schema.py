"""The config schema (pydantic v2): a system of agents, their models or callbacks, and their connections."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from llmling.config.base import Strict
from llmling.config.capabilities import (
    SERVER_NAME,
    HistoryConfig,
    HttpServerConfig,
    KnowledgeConfig,
    MCPServerConfig,
    StdioServerConfig,
    mcp_server_short_form,
    server_name,
)
from llmling.config.observe import MetricsConfig, TelemetryConfig
from llmling.config.providers import LOCAL_PREFIX
from llmling.config.state import state_dir as resolve_state_dir
from llmling.config.supervision import MAX_CONCURRENCY, MAX_QUEUE, RestartConfig
from llmling.config.transport import MAX_REPLICAS, Placement, TransportConfig
from llmling.config.triggers import BackgroundConfig, TriggerConfig, unique_trigger_names
from llmling.names import check_name, expand_short_form, unknown


class ModelSettings(Strict):
    """Sampling settings passed to the model call as they are, and the call's time and retry limits."""

    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, gt=0)
    top_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = None
    stop: list[str] | None = None
    # Invariant: one deadline for the whole model call (every attempt, the backoff waits, the whole stream).
    timeout: float = Field(
        120.0, gt=0, description="seconds one model call may take, retries and streaming included"
    )
    num_retries: int = Field(
        2, ge=0, le=10, description="retries of a call the provider answered 429 or 5xx (with backoff)"
    )


class WordMatch(Strict):
    """True when the message contains any (or all) of `words`."""

    type: Literal["word_match"] = "word_match"
    words: list[str] = Field(min_length=1)
    case_sensitive: bool = False
    mode: Literal["any", "all"] = "any"


class CallableCondition(Strict):
    """True when `module:function(message)` returns true (the function gets the message's content)."""

    type: Literal["callable"] = "callable"
    path: str

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return _import_path(value)


Condition = Annotated[WordMatch | CallableCondition, Field(discriminator="type")]


def _import_path(value: str) -> str:
    if not re.fullmatch(r"[\w.]+:[\w.]+", value):
        raise ValueError("must be an import path of the form 'module:function'")
    module, _, name = value.partition(":")
    if module == "__main__":
        # Agent processes never run the user's main script (supervisor/spawner.py), so nothing there resolves.
        raise ValueError(f"{value!r}: __main__ is not importable by agents; move {name} into a module")
    return value


ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"


def _condition(value: Any) -> Any:
    return {"type": "callable", "path": value} if isinstance(value, str) else value


class ConnectionConfig(Strict):
    """Where an agent's replies go. The short form is the target's name alone."""

    name: str = Field(description="the target agent")
    wait_for_completion: bool = Field(
        False, description="`run()` waits for this connection's downstream runs unless told otherwise"
    )
    filter: Condition | None = Field(None, description="forward only messages that match")
    transform: str | None = Field(None, description="`module:function` rewriting the content before forwarding")
    stop_condition: Condition | None = Field(
        None, description="a matching message is not forwarded and ends this connection"
    )

    @field_validator("filter", "stop_condition", mode="before")
    @classmethod
    def _short_condition(cls, value: Any) -> Any:
        return _condition(value)

    @field_validator("transform")
    @classmethod
    def _transform(cls, value: str | None) -> str | None:
        return None if value is None else _import_path(value)


class RetryConfig(Strict):
    """Redelivery of a failed run: same run id, `attempt + 1`, after an exponential backoff with jitter."""

    max_attempts: int = Field(3, ge=1, description="deliveries of one run at most (1: never redelivered)")
    backoff: float = Field(
        1.0, ge=0, description="seconds before the 2nd attempt, doubling per attempt (times 0.5-1.0 jitter)"
    )
    on: list[Literal["crash", "timeout", "error"]] = Field(
        default_factory=lambda: ["crash", "timeout"],
        description="failures that are redelivered: crash (process died), timeout (run_timeout), error "
        "(the agent's own code raised)",
    )


class AgentConfig(Strict):
    """One agent: an LLM (`model`) or a Python function (`callback`)."""

    model: str | None = Field(
        None, description="a litellm model string (`openai/gpt-4o-mini`), or `local/<name>` for the embedded model"
    )
    callback: str | None = Field(
        None,
        description="`module:function`, sync or async, called with the prompt, returns the reply; "
        "the config file's folder is importable",
    )
    system_prompt: str | None = None
    connections: list[ConnectionConfig] = Field(
        default_factory=list, description="agents that receive this agent's replies: names or mappings"
    )
    parallel_init: bool = Field(True, description="initialise the agent's components concurrently")
    model_settings: ModelSettings = Field(default_factory=ModelSettings)
    api_base: str | None = None
    api_key_env: str | None = Field(None, description="name of the environment variable holding the API key")
    env: dict[str, str] = Field(
        default_factory=dict, description="environment variables set in this agent's process (explicit values)"
    )
    env_passthrough: list[str] = Field(
        default_factory=list,
        description="names of variables passed from the supervisor's environment to this agent's process "
        "(besides the allow-list and the variables its config names)",
    )
    tools: list[str] = Field(
        default_factory=list,
        description="`module:function` callables offered to the model (schema from signature and docstring)",
    )
    max_tool_rounds: int = Field(8, ge=1, description="model rounds that may call tools before a final answer")
    mcp_servers: list[MCPServerConfig] = Field(
        default_factory=list, description="`command args`, or mappings of type stdio or streamable-http"
    )
    knowledge: KnowledgeConfig = Field(default_factory=KnowledgeConfig)
    history: HistoryConfig = Field(default_factory=HistoryConfig)
    triggers: list[TriggerConfig] = Field(
        default_factory=list, description="file, webhook and time triggers; each starts runs of this agent"
    )
    background: BackgroundConfig | None = Field(
        None, description="a prompt the supervisor runs repeatedly from start-up: {prompt, interval, max_count}"
    )
    retry: RetryConfig = Field(default_factory=RetryConfig, description="redelivery of failed runs")
    # `concurrency`: each run's context is the history as of its start; its user/assistant pair joins the
    # history when it completes (completion order).
    concurrency: int = Field(1, ge=1, le=MAX_CONCURRENCY, description="runs at once inside the agent's process")
    max_queue: int = Field(
        1000,
        ge=1,
        le=MAX_QUEUE,
        description="runs accepted and not started; beyond it new runs are refused (busy)",
    )
    run_timeout: float | None = Field(
        600.0, gt=0, description="seconds a run may take once started (null: no limit); then it is cancelled"
    )
    restart: RestartConfig = Field(
        default_factory=RestartConfig, description="restart intensity: {max_restarts, period}"
    )
    # `replicas`: processes of this agent; runs spread across them (each with its own `concurrency`), and
    # `max_queue` counts the agent's waiting runs across all of them.
    replicas: int = Field(1, ge=1, le=MAX_REPLICAS, description="processes of this agent; runs spread over them")
    placement: Placement = Field(
        "local",
        description="where its processes run: local (children of the supervisor), remote (`llmling host` "
        "processes, over `transport.nats`) or any (both)",
    )

    # The `${VAR}`s of this agent's section (outside its triggers), recorded by the loader: they count as named
    # by its config, so its process gets them (supervisor/environment.py). Not part of the file.
    _referenced_env: frozenset[str] = PrivateAttr(default_factory=frozenset)

    @property
    def referenced_env(self) -> frozenset[str]:
        return self._referenced_env

    @field_validator("env", "env_passthrough")
    @classmethod
    def _env_names(cls, value: Any) -> Any:
        for name in value:
            if not re.fullmatch(ENV_NAME, name):
                raise ValueError(f"{name!r} is not an environment variable name")
        return value

    @field_validator("triggers")
    @classmethod
    def _trigger_names(cls, value: list[Any]) -> list[Any]:
        return unique_trigger_names(value)

    @field_validator("tools")
    @classmethod
    def _tool_paths(cls, value: list[str]) -> list[str]:
        return [_import_path(item) for item in value]

    @field_validator("mcp_servers", mode="before")
    @classmethod
    def _short_mcp_servers(cls, value: Any) -> Any:
        return [mcp_server_short_form(item) for item in value] if isinstance(value, list) else value

    @field_validator("mcp_servers")
    @classmethod
    def _mcp_server_names(cls, value: list[StdioServerConfig | HttpServerConfig]) -> list[Any]:
        seen: set[str] = set()
        for server in value:
            if server.name is not None:
                if not re.fullmatch(SERVER_NAME, server.name):
                    raise ValueError(f"MCP server name {server.name!r} must be letters, digits, '_' or '-'")
                if server.name in seen:
                    raise ValueError(f"two MCP servers are named {server.name!r}")
                seen.add(server.name)
        for server in value:
            if server.name is None:
                base = name = server_name(server)
                index = 2
                while name in seen:
                    name, index = f"{base}-{index}", index + 1
                server.name = name
                seen.add(name)
        return value

    @model_validator(mode="after")
    def _capabilities_need_model(self) -> AgentConfig:
        if self.callback is not None:
            used = [key for key in ("tools", "mcp_servers") if getattr(self, key)]
            used += ["knowledge"] if not self.knowledge.empty else []
            if used:
                raise ValueError(f"{', '.join(used)}: only for agents with a 'model' (a callback gets the prompt)")
        names = {server.name for server in self.mcp_servers}
        for ref in self.knowledge.resources:
            if not self.mcp_servers:
                raise ValueError(f"knowledge resource {ref.uri!r} needs an MCP server in 'mcp_servers'")
            if ref.server is not None and ref.server not in names:
                raise ValueError(f"knowledge resource {ref.uri!r}: {unknown('MCP server', ref.server, names)}")
        return self

    @field_validator("callback")
    @classmethod
    def _callback_path(cls, value: str | None) -> str | None:
        return None if value is None else _import_path(value)

    @field_validator("connections", mode="before")
    @classmethod
    def _short_connections(cls, value: Any) -> Any:
        return expand_short_form(value, "name")

    @model_validator(mode="after")
    def _one_backend(self) -> AgentConfig:
        if (self.model is None) == (self.callback is None):
            raise ValueError("set exactly one of 'model' or 'callback'")
        return self

    @property
    def local_model(self) -> str | None:
        """The embedded model's name when `model` is `local/<name>`."""
        if self.model and self.model.startswith(LOCAL_PREFIX):
            return self.model[len(LOCAL_PREFIX) :]
        return None


class SystemConfig(Strict):
    """A system of agents: what `llmling up` runs."""

    name: str = Field(description="the system's name; default: the config file's name without suffix")
    agents: dict[str, AgentConfig]
    max_hops: int = Field(16, ge=1, description="a routed message chain ends after this many hops")
    shutdown_timeout: float = Field(10.0, ge=0, description="seconds in-flight runs get to finish on shutdown")
    start_timeout: float = Field(
        120.0, gt=0, description="seconds an agent process gets from its spawn to READY before it is restarted"
    )
    heartbeat_interval: float = Field(5.0, gt=0, description="seconds between pings of each agent's event loop")
    heartbeat_timeout: float = Field(
        10.0, gt=0, description="an agent whose loop does not answer a ping in this many seconds is restarted"
    )
    durability: Literal["sync", "batch", "off"] = Field(
        "batch",
        description="the journal of accepted runs: sync survives a power loss, batch a crash of the process, "
        "off keeps no journal (accepted runs live only in memory)",
    )
    state_dir: str | None = Field(
        None,
        description="where the run history (history.db) and the logs are kept, relative to the config folder; "
        "default: $XDG_STATE_HOME/llmling/<name>-<hash of the config's path> (~/.local/state/llmling/...)",
    )
    metrics: MetricsConfig | None = Field(None, description="serve Prometheus /metrics from the supervisor")
    telemetry: TelemetryConfig | None = Field(None, description="one OpenTelemetry span per run (OTLP/HTTP)")
    transport: TransportConfig = Field(
        default_factory=TransportConfig, description="how agents on other hosts are reached: {nats: {...}}"
    )
    # Where the config came from; not part of the file (so not in the schema, and refused in YAML).
    source: SkipJsonSchema[Path | None] = Field(None, exclude=True)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)

    @field_validator("durability", mode="before")
    @classmethod
    def _durability_off(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML reads a bare `off` as false

    @field_validator("agents")
    @classmethod
    def _agent_names(cls, value: dict[str, AgentConfig]) -> dict[str, AgentConfig]:
        if not value:
            raise ValueError("at least one agent is required")
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
                raise ValueError(f"agent name {name!r} must be letters, digits, '_' or '-'")
        return value

    @property
    def base_dir(self) -> Path:
        return self.source.parent if self.source else Path.cwd()

    @property
    def needs_llm(self) -> bool:
        return any(agent.model is not None for agent in self.agents.values())

    @property
    def needs_mcp(self) -> bool:
        return any(agent.mcp_servers for agent in self.agents.values())

    @property
    def state_path(self) -> Path:
        """The folder of this system's state (history.db, logs/): see llmling/config/state.py."""
        return resolve_state_dir(self.name, self.source, self.state_dir)

    @property
    def local_models(self) -> set[str]:
        return {name for agent in self.agents.values() if (name := agent.local_model)}
