"""One agent's place in the system: keeps its process alive, knows its connection, fails its runs on a crash."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import time
from collections.abc import Callable
from typing import Any

from loguru import logger

from llmling.agent_proc.spec import AgentSpec
from llmling.errors import AgentRunError, StartupError
from llmling.ipc.peer import OnChunk, Peer, PeerClosed
from llmling.supervisor.exits import Child
from llmling.supervisor.spawner import Spawner

Message = dict[str, Any]
OnEvent = Callable[[Message], None]

BACKOFF_START = 0.25
BACKOFF_MAX = 30.0
# A process that stayed up this long has its backoff reset.
STABLE_AFTER = 30.0


class AgentSlot:
    """Keeps one agent process alive: spawn, wait for READY, restart with exponential backoff.

    `run()` is the slot's long-lived task (owned by the supervisor's TaskGroup); `started` resolves once the
    first process is READY or its start failed (then `state` is "failed" and `last_error` says why, and the
    slot keeps retrying with backoff). Runs in flight when the process dies fail with
    AgentRunError; runs submitted while it restarts wait for the next READY.
    """

    def __init__(
        self,
        name: str,
        make_spec: Callable[[str], AgentSpec],
        spawner: Spawner,
        on_event: OnEvent,
        heartbeat: tuple[float, float] = (5.0, 10.0),
        start_timeout: float = 120.0,
    ) -> None:
        self.name = name
        # (interval, timeout) of the pings that check the agent's own event loop.
        self._heartbeat_interval, self._heartbeat_timeout = heartbeat
        # Seconds from spawn to READY; an agent that takes longer (a hung init) is ended and retried.
        self._start_timeout = start_timeout
        self._make_spec = make_spec
        self._spawner = spawner
        self._on_event = on_event
        self.log = logger.bind(agent=name)
        self.state = "stopped"
        self.pid: int | None = None
        self.restarts = 0
        self.last_error: str | None = None
        # Invariant: set exactly while `peer` is an authenticated, READY connection of the current process.
        self._ready = asyncio.Event()
        # Set when the current start attempt failed (cleared when the next one begins): wakes the runs
        # waiting for READY, which would otherwise wait for a READY that this attempt will never bring.
        self._start_failed = asyncio.Event()
        self.peer: Peer | None = None
        self._token: str | None = None
        self._hello: asyncio.Future[Peer] | None = None
        self._init_result: asyncio.Future[None] | None = None
        self._child: Child | None = None
        self._stopping = False
        # Set by `restart()`: the current process ends on purpose, so the next one starts at once.
        self._replacing = False
        # Invariant: runs sent to the process and not answered; `_idle` is set exactly when it is 0.
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- state ----------------------------------------------------------------------------------------------
    def _set_state(self, state: str, **extra: Any) -> None:
        self.state = state
        self._on_event({"event": "agent_state", "agent": self.name, "state": state, "pid": self.pid, **extra})

    def status(self) -> Message:
        return {
            "name": self.name,
            "pid": self.pid,
            "state": self.state,
            "restarts": self.restarts,
            "error": self.last_error,
        }

    # -- from the control socket ----------------------------------------------------------------------------
    def authenticate(self, peer: Peer, token: str) -> bool:
        """Bind `peer` to this slot if it presents the current process's token."""
        if self._token is None or not secrets.compare_digest(token, self._token) or self._hello is None:
            return False
        if self._hello.done():
            return False
        peer.info = self
        self._hello.set_result(peer)
        return True

    def on_agent_message(self, peer: Peer, message: Message) -> None:
        kind = message.get("t")
        if kind == "ready" and self._init_result is not None and not self._init_result.done():
            self._init_result.set_result(None)
        elif kind == "failed" and self._init_result is not None and not self._init_result.done():
            self._init_result.set_exception(StartupError(str(message.get("error"))))
        elif kind == "component":
            self._on_event(
                {
                    "event": "component",
                    "agent": self.name,
                    "component": message.get("component"),
                    "state": message.get("state"),
                }
            )
        else:
            self.log.warning("unexpected message {!r} from the agent process", kind)

    # -- the slot's task ------------------------------------------------------------------------------------
    async def run(self) -> None:
        backoff = BACKOFF_START
        while not self._stopping:
            began = time.monotonic()
            failed = False
            try:
                await self._one_life()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._stopping:
                    break  # the process was ended on purpose during its start
                failed = True
                self.last_error = str(exc)
                self.log.error("{}", exc)
                self._set_state("failed", error=str(exc))
                self._start_failed.set()
            if not self.started.done():
                self.started.set_result(None)  # the first attempt has an outcome; `state` says which
            if self._stopping:
                break
            if self._replacing and not failed:
                self._replacing = False
                continue  # ended on purpose (reload, restart): a fresh process at once, not a crash
            if time.monotonic() - began > STABLE_AFTER:
                backoff = BACKOFF_START
            self.restarts += 1
            if not failed:
                self._set_state("restarting", delay=backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
        if not self.started.done():
            self.started.set_result(None)
        self._set_state("stopped")

    async def _one_life(self) -> None:
        loop = asyncio.get_running_loop()
        self._token = secrets.token_urlsafe(24)
        self._hello = loop.create_future()
        self._init_result = loop.create_future()
        self._start_failed.clear()
        self._set_state("starting")
        child = self._child = Child(await self._spawner.spawn(self._make_spec(self._token)))
        self.pid = child.pid
        exited = child.exited
        try:
            try:
                async with asyncio.timeout(self._start_timeout):
                    peer = await _first(self._hello, exited, "exited before connecting")
                    self.peer = peer
                    await _first(self._init_result, exited, "exited during its init")
            except TimeoutError:
                raise StartupError(f"not ready within start_timeout={self._start_timeout:g} s") from None
            self._ready.set()
            self._set_state("ready")
            if not self.started.done():
                self.started.set_result(None)
            async with asyncio.TaskGroup() as group:
                heartbeat = group.create_task(self._heartbeat(peer, child.pid))
                code = await child.wait()
                heartbeat.cancel()
            if not self._stopping and not self._replacing:
                self.last_error = f"process exited with {_describe(code)}"
                self.log.warning("process {} exited with {}", child.pid, _describe(code))
        finally:
            self._ready.clear()
            self.peer = None
            self._token = None
            if child.alive:
                await child.end(0.0, self.name)

    async def _heartbeat(self, peer: Peer, pid: int | None) -> None:
        """Ping the agent's own event loop; a loop blocked past the timeout gets its process killed."""
        while True:
            await asyncio.sleep(self._heartbeat_interval)
            try:
                await asyncio.wait_for(peer.request({"t": "ping"}), self._heartbeat_timeout)
            except TimeoutError:
                self.log.error("no heartbeat for {} s; killing process {}", self._heartbeat_timeout, pid)
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                return
            except (PeerClosed, ConnectionError):
                return

    # -- runs -----------------------------------------------------------------------------------------------
    async def submit(self, message: Message, on_chunk: OnChunk | None, wait_ready: float = 60.0) -> Message:
        """Send a run to the agent process and return its final reply. Raises AgentRunError."""
        if not self._ready.is_set():
            if self._stopping:
                raise AgentRunError(self.name, "agent is stopped")
            if self.state == "failed":
                raise AgentRunError(self.name, f"agent failed to start: {self.last_error}")
            ready = asyncio.ensure_future(self._ready.wait())
            failed = asyncio.ensure_future(self._start_failed.wait())
            try:
                done, _ = await asyncio.wait(
                    {ready, failed}, timeout=wait_ready, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                ready.cancel()
                failed.cancel()
            if not self._ready.is_set():
                if self._start_failed.is_set():
                    raise AgentRunError(self.name, f"agent failed to start: {self.last_error}")
                if ready in done:  # it was READY, and its process died before the run was sent
                    raise AgentRunError(self.name, "agent process died before the run")
                raise AgentRunError(self.name, f"agent not ready after {wait_ready} s")
        peer = self.peer
        assert peer is not None
        self.in_flight += 1
        self._idle.clear()
        try:
            reply = await peer.start_request(message, on_chunk)
        except (PeerClosed, ConnectionError):
            raise AgentRunError(self.name, "agent process died during the run") from None
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()
        if reply.get("t") == "error":
            raise AgentRunError(self.name, str(reply.get("error")))
        return reply

    # -- stopping -------------------------------------------------------------------------------------------
    async def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` until no run is in flight in the process; True when none is."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def restart(self, grace: float, drain: float) -> None:
        """Replace the process on purpose: runs in flight get up to `drain` s, new ones wait for the fresh
        process (READY at once, with the spec as of now); not counted as a crash, no backoff."""
        if self._child is None or not self._child.alive:
            return
        self._ready.clear()  # from now on new runs wait for the fresh process
        await self.drain(drain)
        self._replacing = True
        if self.peer is not None:
            self.peer.send({"t": "shutdown"})
        await self._child.end(grace, self.name)

    async def stop(self, grace: float) -> None:
        """Ask the process to exit, escalate after `grace`; the slot's task then ends."""
        self._stopping = True
        self._ready.clear()
        if self.peer is not None:
            self.peer.send({"t": "shutdown"})
        if self._child is not None:
            await self._child.end(grace, self.name)


async def _first(wanted: asyncio.Future[Any], exited: asyncio.Future[Any], message: str) -> Any:
    await asyncio.wait({wanted, exited}, return_when=asyncio.FIRST_COMPLETED)
    if wanted.done():
        return wanted.result()
    raise StartupError(f"{message} ({_describe(exited.result())})")


def _describe(code: int | None) -> str:
    if code is None:
        return "an unknown status"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"exit code {code}"
