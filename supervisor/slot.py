"""One agent's place in the system: keeps its process alive, admits and paces its runs, fails them with a kind.

Admission: at most `max_queue` runs wait in the slot (accepted, not started). The router `admit()`s a root
run before it journals and acknowledges it (AgentBusyError when the queue is full); the admission counts
until the run enters `submit(admitted=True)` or is `release()`d. `check_capacity()` is the same test without
counting, for edges that want to refuse before doing any work. Forwarded runs are never refused. At most
`concurrency` runs are in the agent's process at once; the
others wait here, in order. A run sent to the process has a deadline of `run_timeout` + a grace: the agent
cancels the run itself at `run_timeout`; one that does not give it up by the deadline has its process replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, get_args

from loguru import logger

from llmling.agent_proc.spec import AgentSpec
from llmling.config import AgentConfig, SystemConfig
from llmling.errors import AgentBusyError, AgentRunError, LLMlingError, RunErrorKind, StartupError
from llmling.ipc.messages import ResultFrame, RunFrame
from llmling.ipc.peer import OnChunk, Peer, PeerClosed
from llmling.supervisor.exits import Child
from llmling.supervisor.intensity import RestartIntensity
from llmling.supervisor.spawner import Spawner

Message = dict[str, Any]
OnEvent = Callable[[Message], None]

# Seconds past `run_timeout` the agent process gets to give a cancelled run up before it is replaced.
TIMEOUT_GRACE = 5.0
# A heartbeat wait that overran its timeout by this much means the supervisor's own loop was late: not judged.
SUPERVISOR_LAG = 1.0
# Weight of the latest run in the moving average of run durations (for Retry-After).
RUN_SECONDS_WEIGHT = 0.2
RETRY_AFTER_MAX = 60
KINDS: tuple[str, ...] = get_args(RunErrorKind)
# States that end a start attempt.
SETTLED = ("ready", "failed", "stopped")


class AgentUnavailable(LLMlingError):
    """A request needs the agent running, and it is stopped."""


@dataclass(frozen=True, slots=True)
class SlotPolicy:
    """How a slot keeps its agent: admission, pacing, deadlines, heartbeat and restarts."""

    concurrency: int = 1
    max_queue: int = 1000
    # Seconds a run may take once sent to the process (None: no limit).
    run_timeout: float | None = 600.0
    max_restarts: int = 5
    restart_period: float = 60.0
    # (interval, timeout) of the pings that check the agent's own event loop.
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 10.0
    # Seconds from spawn to READY; an agent that takes longer (a hung init) is ended and retried.
    start_timeout: float = 120.0
    timeout_grace: float = TIMEOUT_GRACE

    @classmethod
    def from_config(cls, system: SystemConfig, agent: AgentConfig) -> SlotPolicy:
        return cls(
            concurrency=agent.concurrency,
            max_queue=agent.max_queue,
            run_timeout=agent.run_timeout,
            max_restarts=agent.restart.max_restarts,
            restart_period=agent.restart.period,
            heartbeat_interval=system.heartbeat_interval,
            heartbeat_timeout=system.heartbeat_timeout,
            start_timeout=system.start_timeout,
        )


class AgentSlot:
    """Keeps one agent process alive: spawn, wait for READY, restart under a restart intensity.

    `run()` is the slot's long-lived task (owned by the supervisor's TaskGroup); `started` resolves once the
    first process is READY or its start failed (then `state` is "failed" and `last_error` says why). After a
    crash the first restart is immediate, repeated ones back off with full jitter; more than `max_restarts`
    within `restart_period` and the slot gives up (`state` "failed", `gave_up`) until `restart()`.
    `submit()` raises AgentRunError with its `kind`: "crash" (the process died during the run), "timeout",
    "unavailable" (failed or stopped), "error" (the agent's own code failed, or its error frame's kind).
    """

    def __init__(
        self,
        name: str,
        make_spec: Callable[[str], AgentSpec],
        spawner: Spawner,
        on_event: OnEvent,
        policy: SlotPolicy | None = None,
        replica: int | None = None,
    ) -> None:
        self.name = name
        self.policy = policy = policy or SlotPolicy()
        self._make_spec = make_spec
        self._spawner = spawner
        self._on_event = on_event
        self.replica: int | None = None
        self.label = name
        self.log = logger.bind(agent=name)
        self.number(replica)
        self.state = "stopped"
        self.pid: int | None = None
        self.restarts = 0
        self.last_error: str | None = None
        self._intensity = RestartIntensity(policy.max_restarts, policy.restart_period)
        # Invariant: runs inside `submit` not yet sent to the process (waiting for a place or for READY).
        self.queued = 0
        # Invariant: runs admitted by `admit()` that have not entered `submit` nor been released; they count
        # towards `max_queue` with `queued` (a run is journaled between its admission and its `submit`).
        self.admitted = 0
        # Invariant: runs sent to the current process and not answered; never more than `concurrency`.
        self.running = 0
        # The `concurrency` places; a run holds one from before it waits for READY until its reply. FIFO.
        self._places = asyncio.Semaphore(policy.concurrency)
        # Set whenever `running` is 0 (a graceful restart waits for it).
        self._idle = asyncio.Event()
        self._idle.set()
        # Moving average of the seconds a run takes in the process (for Retry-After).
        self._run_seconds = 1.0
        # Loop time of the last frame heard from the process (results, chunks, pongs, component reports).
        self._last_heard = 0.0
        # Invariant: set exactly while `peer` is an authenticated, READY connection of the current process
        # that takes new runs (cleared during a graceful restart).
        self._ready = asyncio.Event()
        # Set when the current start attempt failed (cleared when the next one begins): wakes the runs
        # waiting for READY, which would otherwise wait for a READY that this attempt will never bring.
        self._start_failed = asyncio.Event()
        # Invariant: set while the slot takes no runs at all: it gave up (restart intensity) or it is stopping.
        self._down = asyncio.Event()
        # True after the restart intensity was exceeded, until `restart()`.
        self.gave_up = False
        # Wakes the slot's task from a backoff nap or from giving up (a restart or a stop was asked for).
        self._wake = asyncio.Event()
        # True while a requested restart replaces the current process (its end is not a crash).
        self._replacing = False
        # Futures of `restart()` calls, resolved with the next settled state (ready, failed, stopped).
        self._outcome_waiters: list[asyncio.Future[str]] = []
        self.peer: Peer | None = None
        self._token: str | None = None
        self._hello: asyncio.Future[Peer] | None = None
        self._init_result: asyncio.Future[None] | None = None
        self._child: Child | None = None
        self._stopping = False
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- state ----------------------------------------------------------------------------------------------
    def _set_state(self, state: str, **extra: Any) -> None:
        self.state = state
        if state in SETTLED and self._outcome_waiters:
            waiters, self._outcome_waiters = self._outcome_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(state)
        self._on_event({"event": "agent_state", "agent": self.name, "state": state, "pid": self.pid, **extra})

    def number(self, replica: int | None) -> None:
        """This process's number among its agent's replicas (1-based; None: the agent's only process). Its
        logs are labelled `name#replica`."""
        self.replica = replica
        self.label = self.name if replica is None else f"{self.name}#{replica}"
        self.log = logger.bind(agent=self.label)

    @property
    def available(self) -> bool:
        """False while the slot refuses runs: stopping, given up, or its last start failed."""
        return not self._stopping and not self.gave_up and self.state != "failed"

    @property
    def takes_runs(self) -> bool:
        """True while a READY process takes new runs: not during a graceful restart, nor once its connection
        closed (the process is ending)."""
        peer = self.peer
        return self._ready.is_set() and peer is not None and peer.is_open

    def status(self) -> Message:
        return {
            "name": self.name,
            "pid": self.pid,
            "state": self.state,
            "restarts": self.restarts,
            "error": self.last_error,
            "gave_up": self.gave_up,
            "queued": self.queued,
            "running": self.running,
            "concurrency": self.policy.concurrency,
            "max_queue": self.policy.max_queue,
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
        self._heard()
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

    def _heard(self, *_: object) -> None:
        self._last_heard = asyncio.get_running_loop().time()

    # -- the slot's task ------------------------------------------------------------------------------------
    async def run(self) -> None:
        while not self._stopping:
            failed = False
            try:
                await self._one_life()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._stopping:
                    break  # the process was ended on purpose during its start
                if not self._replacing:
                    failed = True
                    self.last_error = str(exc)
                    self.log.error("{}", exc)
                    self._set_state("failed", error=str(exc))
                    self._start_failed.set()
            if not self.started.done():
                self.started.set_result(None)  # the first attempt has an outcome; `state` says which
            if self._stopping:
                break
            if self._replacing:  # a requested restart: at once, and not counted as a crash
                self._replacing = False
                self.restarts += 1
                continue
            delay = self._intensity.crashed(start_failed=failed)
            if delay is None:
                await self._give_up()
                continue
            self.restarts += 1
            if not failed:
                self._set_state("restarting", delay=round(delay, 3))
            if delay > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
        if not self.started.done():
            self.started.set_result(None)
        self._set_state("stopped")

    async def _give_up(self) -> None:
        """More than `max_restarts` within the period: stay failed until `restart()` (or the stop)."""
        policy = self.policy
        self.gave_up = True
        self.last_error = (
            f"gave up after {self._intensity.recent} crashes within {policy.restart_period:g} s "
            f"(restart: max_restarts={policy.max_restarts}); last: {self.last_error}; "
            f"`llmling restart {self.name}` starts it again"
        )
        self.log.error("{}", self.last_error)
        self._down.set()
        self._wake.clear()
        self._set_state("failed", error=self.last_error, gave_up=True)
        await self._wake.wait()

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
                async with asyncio.timeout(self.policy.start_timeout):
                    peer = await _first(self._hello, exited, "exited before connecting")
                    self.peer = peer
                    await _first(self._init_result, exited, "exited during its init")
            except TimeoutError:
                raise StartupError(f"not ready within start_timeout={self.policy.start_timeout:g} s") from None
            self._ready.set()
            self._set_state("ready")
            if not self.started.done():
                self.started.set_result(None)
            async with asyncio.TaskGroup() as group:
                heartbeat = group.create_task(self._heartbeat(peer, child))
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

    async def _heartbeat(self, peer: Peer, child: Child) -> None:
        """Ping the agent's own event loop; kill the process only when its loop is blocked.

        A ping unanswered for `heartbeat_timeout` counts only when nothing else was heard from the process in
        that time either (results and chunks arriving mean its loop turns, however busy it is) and the
        supervisor's own loop was not late itself; otherwise the same ping gets another window.
        """
        loop = asyncio.get_running_loop()
        timeout = self.policy.heartbeat_timeout
        while True:
            await asyncio.sleep(self.policy.heartbeat_interval)
            try:
                pong = peer.start_request({"t": "ping"})
            except PeerClosed:
                return
            pong.add_done_callback(self._heard)
            window = loop.time()
            while True:
                await asyncio.wait({pong}, timeout=timeout)
                if pong.done():
                    break
                now = loop.time()
                if self._last_heard > window or now - window > timeout + SUPERVISOR_LAG:
                    window = now  # the agent's loop is turning, or ours was late: not a blocked loop
                    continue
                self.log.error("no heartbeat for {} s; killing process {}", timeout, child.pid)
                child.kill()
                return
            if pong.cancelled() or pong.exception() is not None:
                return

    # -- admission ------------------------------------------------------------------------------------------
    def check_capacity(self) -> None:
        """Raise AgentBusyError when `max_queue` runs already wait (accepted and not started); counts nothing."""
        # Accepted runs beyond the `concurrency` places: those that will have to wait for one.
        waiting = max(0, self.queued + self.admitted + self.running - self.policy.concurrency)
        if waiting >= self.policy.max_queue:
            raise AgentBusyError(self.name, waiting, self.retry_after())

    def admit(self) -> None:
        """Count one more accepted run towards `max_queue` until it enters `submit(admitted=True)` or is
        `release()`d. Raises AgentBusyError (nothing counted) when the queue is full."""
        self.check_capacity()
        self.admitted += 1

    def release(self) -> None:
        """An admitted run that will not reach `submit` (its acceptance failed)."""
        self.admitted -= 1

    def retry_after(self) -> int:
        """Whole seconds until a place is likely free: one average run shared by the places."""
        return max(1, min(RETRY_AFTER_MAX, math.ceil(self._run_seconds / self.policy.concurrency)))

    def _check_available(self) -> None:
        if self._stopping:
            raise AgentRunError(self.name, "agent is stopped", kind="unavailable")
        if self.gave_up:
            raise AgentRunError(self.name, f"agent failed: {self.last_error}", kind="unavailable")
        if self.state == "failed":
            raise AgentRunError(self.name, f"agent failed to start: {self.last_error}", kind="unavailable")

    # -- runs -----------------------------------------------------------------------------------------------
    async def submit(
        self, message: RunFrame, on_chunk: OnChunk | None, wait_ready: float = 60.0, admitted: bool = False
    ) -> ResultFrame:
        """Run `message` in the agent process once a place is free; return its final reply.

        Never refuses for a full queue (a root run was `admit()`ted before; say so with `admitted`, and it is
        counted in `queued` from now on). Raises AgentRunError.
        """
        if admitted:
            self.admitted -= 1
        self._check_available()
        self.queued += 1
        try:
            await self._places.acquire()
        except BaseException:
            self.queued -= 1
            raise
        try:
            try:
                peer = await self._wait_ready(wait_ready)
            finally:
                self.queued -= 1
            return await self._exchange(peer, message, on_chunk)
        finally:
            self._places.release()

    async def _wait_ready(self, limit: float) -> Peer:
        """The READY process's connection; waits through restarts. Raises AgentRunError ("unavailable")."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while True:
            self._check_available()
            if self._ready.is_set() and self.peer is not None and self.peer.is_open:
                return self.peer
            waits = [
                asyncio.ensure_future(event.wait()) for event in (self._ready, self._start_failed, self._down)
            ]
            try:
                await asyncio.wait(waits, timeout=deadline - loop.time(), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
            if self._start_failed.is_set() and not self._ready.is_set():
                raise AgentRunError(self.name, f"agent failed to start: {self.last_error}", kind="unavailable")
            if loop.time() >= deadline and not self._ready.is_set():
                raise AgentRunError(self.name, f"agent not ready after {limit:g} s", kind="unavailable")
            child, peer = self._child, self.peer
            if self._ready.is_set() and (peer is None or not peer.is_open) and child is not None and child.alive:
                # READY, but its connection just closed: the process is ending; wait for the slot to see it.
                await asyncio.wait({child.exited}, timeout=max(0.0, deadline - loop.time()))

    async def _exchange(self, peer: Peer, message: Message, on_chunk: OnChunk | None) -> Message:
        """Send the run, wait for its reply up to run_timeout + grace; past that, replace the process."""
        timeout = self.policy.run_timeout
        message.setdefault("timeout", timeout)
        loop = asyncio.get_running_loop()
        heard_chunk = None
        if on_chunk is not None:
            forward = on_chunk

            def heard_chunk(chunk: Message) -> None:
                self._heard()
                forward(chunk)

        try:
            reply_future = peer.start_request(message, heard_chunk)
        except PeerClosed:
            raise AgentRunError(self.name, "agent process died during the run", kind="crash") from None
        reply_future.add_done_callback(self._heard)
        child = self._child
        self.running += 1
        self._idle.clear()
        started = loop.time()
        try:
            async with asyncio.timeout(None if timeout is None else timeout + self.policy.timeout_grace):
                reply = await reply_future
        except TimeoutError:
            self.log.error(
                "run {} not given up {:g} s after its run_timeout={:g} s; replacing process {}",
                message.get("id"),
                self.policy.timeout_grace,
                timeout,
                None if child is None else child.pid,
            )
            if child is not None:
                child.kill()
            raise AgentRunError(self.name, f"run timed out after {timeout:g} s", kind="timeout") from None
        except (PeerClosed, ConnectionError):
            raise AgentRunError(self.name, "agent process died during the run", kind="crash") from None
        finally:
            peer.forget(str(message.get("id")))
            self.running -= 1
            if self.running == 0:
                self._idle.set()
        elapsed = loop.time() - started
        self._run_seconds += RUN_SECONDS_WEIGHT * (elapsed - self._run_seconds)
        if reply.get("t") == "error":
            raise AgentRunError.from_reply(self.name, reply)
        return reply

    # -- restart and stop -----------------------------------------------------------------------------------
    async def restart(self, grace: float) -> None:
        """Start a fresh process and reset the restart intensity (`llmling restart`).

        Runs in flight get up to `grace` seconds to finish (new ones wait for the fresh process); those still
        running then fail with kind "crash". Returns once the fresh process is READY or its start failed
        (`state` says which). Raises AgentUnavailable when the slot is stopping.
        """
        if self._stopping:
            raise AgentUnavailable(f"agent {self.name!r} is stopped")
        self._intensity.reset()
        self._start_failed.clear()
        if self.gave_up:
            self.gave_up = False
            self._down.clear()
        outcome = asyncio.get_running_loop().create_future()
        self._outcome_waiters.append(outcome)
        child, peer = self._child, self.peer
        if child is not None and child.alive:
            self._replacing = True
            self._ready.clear()  # no new run goes to the old process; they wait for the fresh one
            await self.drain(grace)
            if peer is not None:
                peer.send({"t": "shutdown"})
            await child.end(grace, self.name)
        self._wake.set()  # from a backoff nap or from giving up
        await outcome

    async def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` until no run is in flight in the process; True when none is."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self, grace: float) -> None:
        """Ask the process to exit, escalate after `grace`; the slot's task then ends."""
        self._stopping = True
        self._ready.clear()
        self._down.set()
        self._wake.set()
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
