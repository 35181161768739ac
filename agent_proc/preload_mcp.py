"""Import the MCP client in the forkserver (for systems where some agent has `mcp_servers`).

Saves each such agent ~0.6 s of imports at start. Importing starts no thread and opens nothing.
"""

from __future__ import annotations

import mcp
import mcp.client.streamable_http
import mcp.shared._httpx_utils  # noqa: F401

import llmling.agent_proc.capabilities  # noqa: F401
