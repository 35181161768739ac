"""The web dashboard: a client of a system's control socket that serves one page, a JSON/SSE API and `/metrics`.

It imports aiohttp and prometheus-client, never litellm, pydantic or the supervisor: `llmling dashboard` runs
beside any system, and `llmling up --dashboard` runs the same client inside the supervisor's process.
"""
