"""The agent process: connect to the supervisor, authenticate, initialise, report READY, serve runs.

Exits when the supervisor says `shutdown`, when the socket reaches EOF (the supervisor is gone), or with the
parent-death signal. Runs are served one at a time, in the order they arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import sys
import traceback
from typing import Any

import uvloop
from loguru import logger

from llmling.agent_proc.death import die_with_parent, name_process
from llmling.agent_proc.reply import error_frame
from llmling.agent_proc.runtime import AgentRuntime
from llmling.agent_proc.spec import AgentSpec
from llmling.errors import ModelError
from llmling.ipc.peer import Peer, connect

Message = dict[str, Any]


class AgentProcess:
    def __init__(self, spec: AgentSpec) -> None:
        self.spec = spec
        self.log = logger.bind(agent=spec.name)
        self.runtime: AgentRuntime | None = None
        self.peer: Peer | None = None
        self._runs: asyncio.Queue[Message] = asyncio.Queue()
        self._stop = asyncio.Event()

    # -- messages from the supervisor ---------------------------------------------------------------------
    def on_message(self, peer: Peer, message: Message) -> None:
        kind = message.get("t")
        if kind == "run":
            self._runs.put_nowait(message)
        elif kind == "ping":
            peer.reply(message, {"t": "pong"})
        elif kind == "shutdown":
            self._stop.set()
        else:
            self.log.warning("ignoring message of type {!r}", kind)

    def on_close(self, peer: Peer, exc: Exception | None) -> None:
        self._stop.set()

    # -- life ---------------------------------------------------------------------------------------------
    async def main(self) -> None:
        self.peer = peer = await connect(self.spec.socket_path, self.on_message, on_close=self.on_close)
        await peer.request({"t": "hello", "role": "agent", "agent": self.spec.name, "token": self.spec.token})
        try:
            self.runtime = AgentRuntime(self.spec)
            await self.runtime.init(self._component, parallel=self.spec.config.get("parallel_init", True))
        except Exception as exc:
            self.log.error("init failed: {}", exc)
            if self.runtime is not None:
                await self.runtime.close()  # before `failed`: the supervisor ends the process after it
            peer.send({"t": "failed", "error": str(exc)})
            return
        peer.send({"t": "ready", "pid": os.getpid()})
        async with asyncio.TaskGroup() as group:
            worker = group.create_task(self._serve())
            await self._stop.wait()
            worker.cancel()
        await self.runtime.close()
        peer.close()

    def _component(self, name: str, state: str) -> None:
        assert self.peer is not None
        self.peer.send({"t": "component", "component": name, "state": state})

    async def _serve(self) -> None:
        assert self.peer is not None and self.runtime is not None
        peer, runtime = self.peer, self.runtime
        while True:
            message = await self._runs.get()
            on_text = None
            if message.get("stream"):

                def on_text(text: str, message: Message = message) -> None:
                    peer.reply(message, {"t": "chunk", "text": text})

            try:
                reply, elapsed = await runtime.run(message["prompt"], on_text)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A model error is one readable line; anything else is a bug worth its traceback.
                trace = None if isinstance(exc, ModelError) else exc
                self.log.opt(exception=trace).warning("run {} failed: {}", message.get("id"), exc)
                peer.reply(message, error_frame(exc))
                continue
            peer.reply(
                message, {"t": "result", "content": reply.content, "usage": reply.usage, "elapsed": elapsed}
            )


def configure_logging(spec: AgentSpec) -> None:
    logger.remove()
    logger.add(
        sys.stderr,
        level=spec.log_level,
        format="{time:HH:mm:ss.SSS} {level: <7} [{extra[agent]}] {message}",
        enqueue=False,
    )
    logger.configure(extra={"agent": spec.name})


async def agent_main(spec: AgentSpec) -> None:
    configure_logging(spec)
    try:
        await AgentProcess(spec).main()
    except (ConnectionError, OSError) as exc:
        logger.error("lost the supervisor: {}", exc)
    except Exception:
        logger.error("agent process crashed:\n{}", traceback.format_exc())
        raise


def run(spec: AgentSpec) -> None:
    """Process entry point (forked by the forkserver): tie our life to the supervisor's, then serve."""
    # Everything inherited from the forkserver goes to the permanent generation (the forkserver froze its preload
    # already; this also covers what it built after): a full collection here neither writes to those shared
    # pages (+70 MiB USS per agent with litellm) nor scans them (~200 ms).
    gc.freeze()
    die_with_parent()
    name_process(spec.name)
    # Ctrl+C in a terminal reaches the whole process group; the supervisor decides how agents stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(spec.env)
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(agent_main(spec))
