"""The agent process: connect to the supervisor, authenticate, initialise, report READY, serve runs.

Exits when the supervisor says `shutdown`, when the socket reaches EOF (the supervisor is gone), or with the
parent-death signal. Runs are served by `concurrency` worker tasks (AgentConfig, default 1: one at a time, in
the order they arrive); each run is cancelled after the `timeout` its frame carries. Pings are answered from
`on_message`, on the loop, whatever the runs are doing: user code that is sync runs on worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import uvloop
from loguru import logger

from llmling.agent_proc.death import die_with_parent, name_process
from llmling.agent_proc.output import AgentOutput
from llmling.agent_proc.reply import OnText, error_frame
from llmling.agent_proc.run_context import current_run
from llmling.agent_proc.runtime import AgentRuntime
from llmling.agent_proc.spec import AgentSpec
from llmling.context import RunContext
from llmling.errors import ModelError
from llmling.ipc.messages import (
    ComponentFrame,
    ComponentState,
    ErrorFrame,
    FailedFrame,
    HelloFrame,
    ReadyFrame,
    ResultFrame,
    RunFrame,
)
from llmling.ipc.peer import Peer, connect, new_id
from llmling.logs import add_environment_secrets, configure, redact

Message = dict[str, Any]
# Worker threads beyond one per concurrent run: sync tools of a run run concurrently too.
SPARE_THREADS = 4


class AgentProcess:
    def __init__(self, spec: AgentSpec) -> None:
        self.spec = spec
        self.log = logger.bind(agent=spec.name)
        self.runtime: AgentRuntime | None = None
        self.peer: Peer | None = None
        # Runs received and not yet started, in arrival order; `concurrency` workers take them.
        self._runs: asyncio.Queue[RunFrame] = asyncio.Queue()
        self._stop = asyncio.Event()

    # -- messages from the supervisor ---------------------------------------------------------------------
    def on_message(self, peer: Peer, message: Message) -> None:
        kind = message.get("t")
        if kind == "run":
            self._runs.put_nowait(cast(RunFrame, message))
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
        hello: HelloFrame = {
            "t": "hello",
            "id": new_id(),
            "role": "agent",
            "agent": self.spec.name,
            "token": self.spec.token,
        }
        await peer.request(hello)
        output = AgentOutput.install(peer, self.spec.log_level)  # loguru, fd 1 and 2 → `log` frames
        concurrency = self.spec.config.concurrency
        # Sync callbacks and tools run here; one thread per concurrent run, and some for a run's sync tools.
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(
                max(concurrency + SPARE_THREADS, min(32, (os.cpu_count() or 1) + 4)),
                thread_name_prefix="llmling-run",
            )
        )
        try:
            self.runtime = AgentRuntime(self.spec)
            await self.runtime.init(self._component, parallel=self.spec.config.parallel_init)
        except Exception as exc:
            self.log.error("init failed: {}", exc)
            if self.runtime is not None:
                await self.runtime.close()  # before `failed`: the supervisor ends the process after it
            await output.close()
            failed: FailedFrame = {"t": "failed", "error": redact(str(exc))}
            peer.send(failed)
            return
        ready: ReadyFrame = {"t": "ready", "pid": os.getpid()}
        peer.send(ready)
        async with asyncio.TaskGroup() as group:
            workers = [group.create_task(self._worker()) for _ in range(concurrency)]
            await self._stop.wait()
            for worker in workers:
                worker.cancel()
        await self.runtime.close()
        await output.close()
        peer.close()

    def _component(self, name: str, state: ComponentState) -> None:
        assert self.peer is not None
        frame: ComponentFrame = {"t": "component", "component": name, "state": state}
        self.peer.send(frame)

    async def _worker(self) -> None:
        """Serve runs one after another; `concurrency` of these run side by side."""
        assert self.peer is not None
        while True:
            frame = await self._runs.get()
            try:
                await self._serve(frame)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a frame without a field the contract requires: answer it, serve on
                self.log.error("bad run frame: {}: {}", type(exc).__name__, exc)
                if isinstance(frame.get("id"), str):
                    self.peer.reply(frame, {"t": "error", "error": f"bad run frame: {exc!r}", "kind": "error"})
            # A run that never awaited (a fast async callback) must not keep a backlog from letting the
            # loop read its socket (and answer pings): yield between runs.
            await asyncio.sleep(0)

    async def _serve(self, frame: RunFrame) -> None:
        """Run one `run` frame and answer it: `chunk`* then `result`, or `error` with its `kind`."""
        assert self.peer is not None and self.runtime is not None
        peer = self.peer
        on_text: OnText | None = None
        if frame["stream"]:

            def on_text(text: str) -> None:
                peer.reply(frame, {"t": "chunk", "text": text})

        timeout = frame["timeout"]
        deadline = asyncio.timeout(timeout)
        token = current_run.set(
            RunContext(
                id=frame["id"],
                attempt=frame["attempt"],
                trace_id=frame["trace_id"],
                parent_id=frame["parent_id"],
                agent=self.spec.name,
                hops=frame["hops"],
            )
        )
        try:
            async with deadline:
                reply, elapsed = await self.runtime.run(frame["prompt"], on_text)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error: ErrorFrame
            if isinstance(exc, TimeoutError) and deadline.expired():
                self.log.warning("run {} timed out after {:g} s", frame["id"], timeout)
                error = {"t": "error", "error": f"run timed out after {timeout:g} s", "kind": "timeout"}
            else:
                # A model error is one readable line; anything else is a bug worth its traceback.
                trace = None if isinstance(exc, ModelError) else exc
                self.log.opt(exception=trace).warning("run {} failed: {}", frame["id"], exc)
                error = error_frame(exc)
            peer.reply(frame, error)
            return
        finally:
            current_run.reset(token)
        result: ResultFrame = {
            "t": "result",
            "re": frame["id"],
            "content": reply.content,
            "usage": reply.usage,
            "elapsed": elapsed,
        }
        peer.reply(frame, result)


def configure_logging(spec: AgentSpec) -> None:
    """Redacting sinks without `diagnose` (llmling/logs.py); the secrets are the values of this process's
    variables that are keys (its `api_key_env`, any name that looks secret)."""
    add_environment_secrets(os.environ, [spec.config.api_key_env or ""])
    configure(spec.log_level, agent=spec.name)


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
    # On top of the forkserver's environment (the base allow-list, no secrets): this agent's own variables.
    os.environ.update(spec.env)
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(agent_main(spec))
