"""An MCP server for the example agent in capabilities.yml (official `mcp` SDK, stdio transport).

Run by the agent's process as `python example_mcp_server.py` (from this folder); try it alone with
`python example_mcp_server.py` and an MCP client.
"""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

server = MCPServer("example")

GLOSSARY = """\
agent: one LLM (or Python callback) in its own process.
supervisor: the process that starts, watches and routes between agents.
component: one init step of an agent (its backend, tools, an MCP server, a knowledge source).
"""


@server.tool()
def multiply(a: float, b: float) -> float:
    """Multiply two numbers."""
    return a * b


@server.tool()
def define(term: str) -> str:
    """Look a term up in the llmling glossary."""
    for line in GLOSSARY.splitlines():
        if line.lower().startswith(term.lower().strip() + ":"):
            return line
    return f"{term!r} is not in the glossary"


@server.resource("notes://glossary", mime_type="text/plain")
def glossary() -> str:
    """The llmling glossary."""
    return GLOSSARY


if __name__ == "__main__":
    server.run()
