"""An agent's knowledge: text loaded once at init and put into the system context of every run.

Each source is one init component (loaded concurrently with the others): a file or glob (relative to the
config folder), a URL (fetched with aiohttp, bounded in size and time), an inline prompt, or an MCP resource
(read through one of the agent's MCP sessions, once that session is up). A source that cannot be loaded fails
its component, and with it the agent's start. A source longer than `max_bytes` is truncated with a warning.
The loaded texts appear in the context in a fixed order, whatever order they finished loading in: prompts,
paths (a glob's files sorted by name), URLs, resources, each kind in the order of the config's list; every text
but a prompt comes under a `### <path|url|uri>` heading.
"""

from __future__ import annotations

import asyncio
import glob
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from loguru import logger

from llmling.agent_proc.mcp_client import MCPConnection
from llmling.config.capabilities import KnowledgeConfig

_TRUNCATED = "\n[… truncated at {} bytes]"


class Knowledge:
    """The knowledge sources of one agent."""

    def __init__(
        self, config: KnowledgeConfig, base_dir: str, connections: dict[str, MCPConnection], agent: str = ""
    ) -> None:
        self.base_dir = base_dir
        self.max_bytes = config.max_bytes
        self.timeout = config.timeout
        self.connections = connections
        self.log = logger.bind(agent=agent) if agent else logger
        # Invariant: one entry per source, in config order; the text is None until the source has loaded.
        self._texts: dict[str, str | None] = {}
        self._loaders: dict[str, Callable[[], Awaitable[str]]] = {}
        for index, text in enumerate(config.prompts, 1):
            self._add(f"knowledge:prompt#{index}", lambda text=text: self._load_prompt(text))
        for pattern in config.paths:
            self._add(f"knowledge:{pattern}", lambda pattern=pattern: self._load_paths(pattern))
        for url in config.urls:
            self._add(f"knowledge:{url}", lambda url=url: self._load_url(url))
        for ref in config.resources:
            self._add(f"knowledge:{ref.uri}", lambda ref=ref: self._load_resource(ref.uri, ref.server))

    def _add(self, name: str, loader: Callable[[], Awaitable[str]]) -> None:
        unique, index = name, 2
        while unique in self._loaders:
            unique, index = f"{name}#{index}", index + 1
        self._texts[unique] = None
        self._loaders[unique] = loader

    def components(self) -> dict[str, Callable[[], Awaitable[None]]]:
        """One init step per source, named `knowledge:<path|url|uri>` or `knowledge:prompt#<n>`."""

        def step(name: str) -> Callable[[], Awaitable[None]]:
            async def load() -> None:
                self._texts[name] = await self._loaders[name]()

            return load

        return {name: step(name) for name in self._loaders}

    def context(self) -> str:
        """Every loaded source, in config order, for the system message."""
        return "\n\n".join(text for text in self._texts.values() if text)

    # -- loaders ------------------------------------------------------------------------------------------
    def _bounded(self, data: bytes, source: str) -> str:
        text = data[: self.max_bytes].decode("utf-8", errors="replace")
        if len(data) > self.max_bytes:
            self.log.warning("knowledge {} is longer than {} bytes; truncated", source, self.max_bytes)
            text += _TRUNCATED.format(self.max_bytes)
        return text

    async def _load_paths(self, pattern: str) -> str:
        files = await asyncio.to_thread(self._match, pattern)
        parts = []
        for file, name in files:
            data = await asyncio.to_thread(_read_head, file, self.max_bytes + 1)
            parts.append(f"### {name}\n{self._bounded(data, name)}")
        return "\n\n".join(parts)

    def _match(self, pattern: str) -> list[tuple[str, str]]:
        """(path, name in the context) of each file `pattern` names. Raises FileNotFoundError."""
        full = os.path.join(self.base_dir, os.path.expanduser(pattern))
        if not glob.has_magic(full):
            if not os.path.isfile(full):
                raise FileNotFoundError(f"no file {full}")
            files = [full]
        else:
            files = sorted(path for path in glob.glob(full, recursive=True) if os.path.isfile(path))
            if not files:
                raise FileNotFoundError(f"no file matches {full}")
        absolute = os.path.isabs(os.path.expanduser(pattern))
        return [(file, file if absolute else os.path.relpath(file, self.base_dir)) for file in files]

    async def _load_url(self, url: str) -> str:
        import aiohttp

        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as session,
                session.get(url) as response,
            ):
                response.raise_for_status()
                data = bytearray()
                async for chunk in response.content.iter_chunked(1 << 16):
                    data += chunk
                    if len(data) > self.max_bytes:
                        break
                return f"### {url}\n{self._bounded(bytes(data), url)}"
        except TimeoutError:
            raise TimeoutError(f"{url}: no complete answer within {self.timeout} s") from None
        except aiohttp.ClientResponseError as exc:
            raise ConnectionError(f"{url}: HTTP {exc.status} {exc.message}") from None

    async def _load_prompt(self, text: str) -> str:
        return self._bounded(text.encode(), "prompt")

    async def _load_resource(self, uri: str, server: str | None) -> str:
        if server is not None:
            candidates = [self.connections[server]]
        else:
            candidates = list(self.connections.values())
        errors = []
        for connection in candidates:
            await connection.wait_initialised()
            try:
                text = await connection.read_resource(uri)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                errors.append(f"{connection.name}: {type(exc).__name__}: {exc}")
                continue
            return f"### {uri}\n{self._bounded(text.encode(), uri)}"
        raise LookupError(f"cannot read resource {uri!r} ({'; '.join(errors)})")


def _read_head(path: str, size: int) -> bytes:
    with Path(path).open("rb") as file:
        return file.read(size)
