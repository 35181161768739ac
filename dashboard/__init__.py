"""The web dashboard: a client of a system's control socket that serves one page, a JSON/SSE API and `/metrics`.

It imports aiohttp and prometheus-client, never litellm, pydantic or the supervisor: `llmling dashboard` runs
beside any system, and `llmling up --dashboard` runs the same client inside the supervisor's process.
"""

# A token to use instead of a new one: how `up --dashboard` hands its dashboard process the token it printed.
TOKEN_ENV = "LLMLING_DASHBOARD_TOKEN"
