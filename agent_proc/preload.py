"""Modules the forkserver imports once, so every agent process is forked with them warm.

`BASE` is what every agent needs; `LLM` adds litellm (~4 s of imports paid once per system, never per agent).
Importing this module has no side effects; `llmling.agent_proc.preload_llm` is the module that does the work.
"""

from __future__ import annotations

BASE = ["llmling.agent_proc.main"]
LLM = [*BASE, "llmling.agent_proc.preload_llm"]


MCP = "llmling.agent_proc.preload_mcp"
# Always last: freezes everything imported before it (see preload_frozen).
FROZEN = "llmling.agent_proc.preload_frozen"


def modules(needs_llm: bool, needs_mcp: bool = False) -> list[str]:
    """`needs_mcp`: some agent has MCP servers; the MCP client is preloaded too."""
    return [*(LLM if needs_llm else BASE), *([MCP] if needs_mcp else []), FROZEN]
