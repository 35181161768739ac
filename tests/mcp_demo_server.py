"""A small MCP server for the tests (and the example config's pattern), written with the official SDK.

`python mcp_demo_server.py` serves on stdio; `python mcp_demo_server.py http PORT` serves Streamable HTTP on
127.0.0.1:PORT/mcp and answers only requests carrying `X-Test-Token: <$MCP_TEST_TOKEN>` when that is set.
"""

from __future__ import annotations

import os
import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("demo")

FACTS = "The launch code word is PAPAYA. The office plant is called Gustav."


@server.tool()
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


@server.tool()
def lookup(key: str) -> str:
    """Look a key up in the demo server's table."""
    return {"answer": "42", "colour": "teal"}.get(key, f"no entry for {key}")


@server.tool()
def explode(reason: str = "because") -> str:
    """Always fails."""
    raise RuntimeError(f"exploded {reason}")


@server.tool()
def server_pid() -> int:
    """The process id of this server."""
    return os.getpid()


@server.resource("notes://facts", mime_type="text/plain")
def facts() -> str:
    return FACTS


def main() -> None:
    if len(sys.argv) >= 3 and sys.argv[1] == "http":
        import uvicorn
        from starlette.middleware.base import BaseHTTPMiddleware
        from starlette.responses import PlainTextResponse

        token = os.environ.get("MCP_TEST_TOKEN")
        app = server.streamable_http_app()

        async def check(request, call_next):  # type: ignore[no-untyped-def]
            if token and request.headers.get("x-test-token") != token:
                return PlainTextResponse("forbidden", status_code=403)
            return await call_next(request)

        app.add_middleware(BaseHTTPMiddleware, dispatch=check)
        uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
    else:
        server.run()


if __name__ == "__main__":
    main()
