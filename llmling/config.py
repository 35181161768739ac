"""The config schema (pydantic v2) and its loader, which names `file:line` and the key path on errors."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from llmling.errors import ConfigError
from llmling.names import check_name, expand_short_form
from llmling.trigger_config import BackgroundConfig, TriggerConfig, unique_trigger_names, webhook_conflicts

LOCAL_PREFIX = "local/"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSettings(_Strict):
    """Sampling settings passed to the model call as they are."""

    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, gt=0)
    top_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = None
    stop: list[str] | None = None
    timeout: float | None = Field(None, gt=0, description="seconds for one model call")


class WordMatch(_Strict):
    """True when the message contains any (or all) of `words`."""

    type: Literal["word_match"] = "word_match"
    words: list[str] = Field(min_length=1)
    case_sensitive: bool = False
    mode: Literal["any", "all"] = "any"


class CallableCondition(_Strict):
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
    return value


def _condition(value: Any) -> Any:
    return {"type": "callable", "path": value} if isinstance(value, str) else value


class ConnectionConfig(_Strict):
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


# -- capabilities: tools, MCP servers, knowledge, history ---------------------------------------------------
_SERVER_NAME = r"[A-Za-z0-9][A-Za-z0-9_-]*"
# Commands whose first argument names the server better than the command does (`python server.py`).
_LAUNCHERS = {"python", "python3", "node", "npx", "uvx", "uv", "deno", "bun", "pipx", "docker"}


class StdioServerConfig(_Strict):
    """An MCP server started as a subprocess of the agent, spoken to over its stdin/stdout."""

    type: Literal["stdio"] = "stdio"
    name: str | None = Field(None, description="prefix for clashing tool names; default: from the command")
    command: str = Field(description="the executable; `python` means the interpreter llmling runs on")
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(
        default_factory=dict, description="added to the MCP SDK's safe default environment (HOME, PATH, ...)"
    )
    timeout: float = Field(60.0, gt=0, description="seconds to connect, and for each call")


class HttpServerConfig(_Strict):
    """An MCP server reached over Streamable HTTP."""

    type: Literal["streamable-http"] = "streamable-http"
    name: str | None = Field(None, description="prefix for clashing tool names; default: the URL's host")
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(60.0, gt=0, description="seconds to connect, and for each call")


MCPServerConfig = Annotated[StdioServerConfig | HttpServerConfig, Field(discriminator="type")]


def _mcp_server(value: Any) -> Any:
    """`"command args"` → the stdio mapping; a mapping without `type` gets it from `url`/`command`."""
    if isinstance(value, str):
        parts = shlex.split(value)
        if not parts:
            raise ValueError("an MCP server command must not be empty")
        return {"type": "stdio", "command": parts[0], "args": parts[1:]}
    if isinstance(value, dict) and "type" not in value:
        return {"type": "streamable-http" if "url" in value else "stdio", **value}
    return value


def _server_name(server: StdioServerConfig | HttpServerConfig) -> str:
    if isinstance(server, HttpServerConfig):
        raw = urlsplit(server.url).hostname or "mcp"
    else:
        words = [server.command, *server.args]
        raw = next(
            (w for w in words if not w.startswith("-") and Path(w).name not in _LAUNCHERS and "=" not in w),
            server.command,
        )
        raw = Path(raw).stem
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", raw).strip("_-")
    return name if name and name[0].isalnum() else f"mcp{name}"


class ResourceRef(_Strict):
    """An MCP resource read as knowledge; `server` picks the MCP server when the agent has several."""

    uri: str
    server: str | None = None


class KnowledgeConfig(_Strict):
    """Text loaded at init (each source concurrently, as its own component) into every run's system context."""

    paths: list[str] = Field(default_factory=list, description="files and globs, relative to the config folder")
    urls: list[str] = Field(default_factory=list, description="fetched once at init")
    prompts: list[str] = Field(default_factory=list, description="inline text")
    resources: list[ResourceRef] = Field(
        default_factory=list, description="MCP resource URIs, read through this agent's MCP servers"
    )
    max_bytes: int = Field(1_000_000, gt=0, description="per source; a longer one is truncated (with a warning)")
    timeout: float = Field(10.0, gt=0, description="seconds for each URL")

    @field_validator("resources", mode="before")
    @classmethod
    def _short_resources(cls, value: Any) -> Any:
        return expand_short_form(value, "uri")

    @property
    def empty(self) -> bool:
        return not (self.paths or self.urls or self.prompts or self.resources)


class HistoryConfig(_Strict):
    """How much of its recorded conversation an agent keeps in context and resumes with."""

    max_messages: int = Field(
        40, ge=0, description="past messages (user and assistant) in each run's context; 0: no memory"
    )
    resume: Literal["restart", "always", "never"] = Field(
        "restart",
        description="seed a (re)started agent process from the history: after a restart within one `up` "
        "(`restart`), also across `up` sessions (`always`), or never",
    )


class AgentConfig(_Strict):
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
        return [_mcp_server(item) for item in value] if isinstance(value, list) else value

    @field_validator("mcp_servers")
    @classmethod
    def _mcp_server_names(cls, value: list[StdioServerConfig | HttpServerConfig]) -> list[Any]:
        seen: set[str] = set()
        for server in value:
            if server.name is not None:
                if not re.fullmatch(_SERVER_NAME, server.name):
                    raise ValueError(f"MCP server name {server.name!r} must be letters, digits, '_' or '-'")
                if server.name in seen:
                    raise ValueError(f"two MCP servers are named {server.name!r}")
                seen.add(server.name)
        for server in value:
            if server.name is None:
                base = name = _server_name(server)
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
                raise ValueError(f"knowledge resource {ref.uri!r}: unknown MCP server {ref.server!r}")
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


class SystemConfig(_Strict):
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
    state_dir: str | None = Field(
        None,
        description="where the run history (history.db) is kept, relative to the config folder; "
        "default: $XDG_STATE_HOME/llmling/<name> (~/.local/state/llmling/<name>)",
    )
    # Where the config came from; not part of the file (so not in the schema, and refused in YAML).
    source: SkipJsonSchema[Path | None] = Field(None, exclude=True)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)

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
        """The folder of this system's state (history.db)."""
        if self.state_dir:
            return self.base_dir / os.path.expanduser(self.state_dir)
        base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
        return Path(base) / "llmling" / self.name

    @property
    def local_models(self) -> set[str]:
        return {name for agent in self.agents.values() if (name := agent.local_model)}


# -- loading ------------------------------------------------------------------------------------------------
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

Loc = tuple[str | int, ...]


class _Located:
    """Maps key paths of a YAML document to their line numbers."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.lines: dict[Loc, int] = {}
        if root is not None:
            self._walk(root, ())

    def _walk(self, node: yaml.Node, loc: Loc) -> None:
        self.lines[loc] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = (*loc, key.value)
                self.lines[child] = key.start_mark.line + 1
                self._walk_value(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._walk(item, (*loc, index))

    def _walk_value(self, node: yaml.Node, loc: Loc) -> None:
        line = self.lines[loc]
        self._walk(node, loc)
        self.lines[loc] = line  # a key's line is where the key stands

    def document_path(self, loc: Loc) -> Loc:
        """`loc` without the parts pydantic adds that are not keys of the document (union member tags)."""
        kept: Loc = ()
        for index, part in enumerate(loc):
            candidate = (*kept, part)
            if candidate in self.lines or not isinstance(part, str) or index == len(loc) - 1:
                kept = candidate
        return kept

    def line(self, loc: Loc) -> int:
        while loc and loc not in self.lines:
            loc = loc[:-1]
        return self.lines.get(loc, 1)


def _dotted(loc: Loc) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _interpolate(value: Any, loc: Loc, where: _Located, file: str) -> Any:
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            found = os.environ.get(name)
            if found is not None and (found or default is None):
                return found
            if default is not None:
                return default
            raise ConfigError(
                f"{file}:{where.line(loc)}: {_dotted(loc)}: environment variable {name} is not set "
                f"(use ${{{name}:-default}} for a default)"
            )

        return _VAR.sub(substitute, value)
    if isinstance(value, dict):
        return {key: _interpolate(item, (*loc, key), where, file) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolate(item, (*loc, index), where, file) for index, item in enumerate(value)]
    return value


def _first_error(exc: ValidationError, where: _Located, file: str) -> ConfigError:
    lines = []
    for error in exc.errors(include_url=False):
        loc = where.document_path(tuple(error["loc"]))
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        message = message.removeprefix("Value error, ")
        lines.append(f"{file}:{where.line(loc)}: {_dotted(loc)}: {message}")
    return ConfigError("\n".join(lines))


def parse_config(text: str, file: str = "<config>", default_name: str = "llmling") -> SystemConfig:
    """Validate a YAML document. Raises ConfigError naming `file:line` and the key path."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{file}:{line}: invalid YAML: {problem}") from None
    where = _Located(root)
    if not isinstance(data, dict):
        raise ConfigError(f"{file}:1: the config must be a mapping with an 'agents' key")
    if "source" in data:
        raise ConfigError(f"{file}:{where.line(('source',))}: source: unknown key")
    data = _interpolate(data, (), where, file)
    data.setdefault("name", default_name)
    try:
        config = SystemConfig.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc, where, file) from None
    for agent_name, agent in config.agents.items():
        for index, connection in enumerate(agent.connections):
            target = connection.name
            if target not in config.agents:
                loc: Loc = ("agents", agent_name, "connections", index)
                raise ConfigError(f"{file}:{where.line(loc)}: {_dotted(loc)}: unknown agent {target!r}")
    for loc, problem in webhook_conflicts(config.agents):
        raise ConfigError(f"{file}:{where.line(loc)}: {_dotted(loc)}: {problem}")
    return config


def load_config(path: str | os.PathLike[str]) -> SystemConfig:
    """Read and validate a config file. Raises ConfigError (also for a missing or unreadable file)."""
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read config: {exc.strerror}") from None
    config = parse_config(text, str(file), default_name=file.stem)
    config.source = file.resolve()
    return config


def json_schema() -> dict[str, Any]:
    return SystemConfig.model_json_schema()


__all__ = ["AgentConfig", "ModelSettings", "SystemConfig", "json_schema", "load_config", "parse_config"]
