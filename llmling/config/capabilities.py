"""The config of an agent's capabilities: MCP servers, knowledge sources, history."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from llmling.config.base import Strict
from llmling.names import expand_short_form

SERVER_NAME = r"[A-Za-z0-9][A-Za-z0-9_-]*"
# Commands whose first argument names the server better than the command does (`python server.py`).
_LAUNCHERS = {"python", "python3", "node", "npx", "uvx", "uv", "deno", "bun", "pipx", "docker"}


class StdioServerConfig(Strict):
    """An MCP server started as a subprocess of the agent, spoken to over its stdin/stdout."""

    type: Literal["stdio"] = "stdio"
    name: str | None = Field(None, description="prefix for clashing tool names; default: from the command")
    command: str = Field(description="the executable; `python` means the interpreter llmling runs on")
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(
        default_factory=dict, description="added to the MCP SDK's safe default environment (HOME, PATH, ...)"
    )
    timeout: float = Field(60.0, gt=0, description="seconds to connect, and for each call")


class HttpServerConfig(Strict):
    """An MCP server reached over Streamable HTTP."""

    type: Literal["streamable-http"] = "streamable-http"
    name: str | None = Field(None, description="prefix for clashing tool names; default: the URL's host")
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(60.0, gt=0, description="seconds to connect, and for each call")


MCPServerConfig = Annotated[StdioServerConfig | HttpServerConfig, Field(discriminator="type")]


def mcp_server_short_form(value: Any) -> Any:
    """`"command args"` → the stdio mapping; a mapping without `type` gets it from `url`/`command`."""
    if isinstance(value, str):
        parts = shlex.split(value)
        if not parts:
            raise ValueError("an MCP server command must not be empty")
        return {"type": "stdio", "command": parts[0], "args": parts[1:]}
    if isinstance(value, dict) and "type" not in value:
        return {"type": "streamable-http" if "url" in value else "stdio", **value}
    return value


def server_name(server: StdioServerConfig | HttpServerConfig) -> str:
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


class ResourceRef(Strict):
    """An MCP resource read as knowledge; `server` picks the MCP server when the agent has several."""

    uri: str
    server: str | None = None


class KnowledgeConfig(Strict):
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


class HistoryConfig(Strict):
    """How much of its recorded conversation an agent keeps in context and resumes with."""

    max_messages: int = Field(
        40, ge=0, description="past messages (user and assistant) in each run's context; 0: no memory"
    )
    resume: Literal["restart", "always", "never"] = Field(
        "restart",
        description="seed a (re)started agent process from the history: after a restart within one `up` "
        "(`restart`), also across `up` sessions (`always`), or never",
    )
