"""What an agent can do beyond its model: tools, MCP servers and knowledge, as named init components.

`components()` lists the init steps (`tools`, `mcp:<server>`, `knowledge:<source>`); the runtime runs them
concurrently (or one by one) and, once all succeeded, calls `finish()`, which fills the ToolBox in a fixed
order (local tools, then each MCP server's in config order), so tool names do not depend on which component
finished first. `close()` ends the MCP sessions (and so the stdio servers' processes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from loguru import logger

from llmling.agent_proc.knowledge import Knowledge
from llmling.agent_proc.mcp_client import MCPConnection
from llmling.agent_proc.spec import AgentSpec
from llmling.agent_proc.tools import Tool, ToolBox, local_tool

Step = Callable[[], Awaitable[None]]


class Capabilities:
    def __init__(self, spec: AgentSpec) -> None:
        config = spec.config
        self.log = logger.bind(agent=spec.name)
        self.base_dir = spec.base_dir
        self.tool_paths: list[str] = list(config.tools)
        self.toolbox = ToolBox(spec.name)
        # The schema gives every server a unique name (from its command or URL when the config has none).
        self.connections = {
            str(server.name): MCPConnection(server, spec.base_dir, spec.name) for server in config.mcp_servers
        }
        self.knowledge = Knowledge(config.knowledge, spec.base_dir, self.connections, spec.name)
        self._local: list[Tool] = []

    def components(self) -> dict[str, Step]:
        steps: dict[str, Step] = {}
        if self.tool_paths:
            steps["tools"] = self._import_tools
        for name, connection in self.connections.items():
            steps[f"mcp:{name}"] = connection.connect
        steps.update(self.knowledge.components())
        return steps

    async def _import_tools(self) -> None:
        from llmling.importing import import_path

        tools = []
        for path in self.tool_paths:
            try:
                tools.append(local_tool(import_path(path, self.base_dir), origin=path))
            except Exception as exc:
                raise ToolLoadError(f"{path}: {type(exc).__name__}: {exc}") from exc
        self._local = tools

    def finish(self) -> None:
        """Register every tool; called once, after all components succeeded. Raises ValueError on a name clash
        between two local tools."""
        for tool in self._local:
            self.toolbox.add(tool)
        for name, connection in self.connections.items():
            for tool in connection.agent_tools():
                remote = tool.name
                given = self.toolbox.add(tool, prefix=name)
                if given != remote:
                    self.log.info("MCP tool {!r} of {!r} is offered as {!r} (name clash)", remote, name, given)
        if len(self.toolbox):
            self.log.debug("tools: {}", ", ".join(self.toolbox.names))

    def system_context(self) -> str:
        return self.knowledge.context()

    async def close(self) -> None:
        """End every MCP session. Never raises."""
        if self.connections:
            await asyncio.gather(*(connection.close() for connection in self.connections.values()))


class ToolLoadError(Exception):
    """A configured tool could not be imported or described."""


__all__ = ["Capabilities", "ToolLoadError"]
