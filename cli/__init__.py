"""The `llmling` command: a thin client of the control socket (and the foreground host of `up`).

Importing this package loads click and the IPC client only; `up`, `validate` and `schema` import the
config schema and the supervisor when they run. litellm, mcp and aiohttp are never imported here.
"""
