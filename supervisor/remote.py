"""Agents served on other hosts, reached over NATS JetStream: `NatsLink` (one per system) and its runners.

`NatsLink` is the supervisor's one NATS connection: it ensures the stream and the consumers, reads every
remote reply from the results consumer (one task, resolving waiting runs by run id), listens to the hosts'
reports and to the server's max-deliveries advisories. `RemoteAgent` is the `AgentRunner` of an agent with
`placement: remote`: `submit` publishes the run (awaiting the PubAck: it is stored) and waits for its reply;
`HybridAgent` (`placement: any`) runs on the local process while it has a free place, else over NATS.

States of a remote agent: "starting" until a host reported it, "ready" while some host reported it within
3 x `host_heartbeat`, "unreachable" when none did or NATS is disconnected, "stopped" after `stop()`. Runs never
fail for a missing host: they wait in the stream (bounded by the run deadline) until a host takes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from loguru import logger

from llmling.errors import AgentBusyError, AgentRunError, StartupError
from llmling.ipc.frames import FrameError, FrameTooLarge
from llmling.ipc.jetstream import (
    decode,
    encode,
    ensure_results_consumer,
    ensure_run_consumer,
    ensure_stream,
    max_deliveries_advisory,
    run_msg_id,
)
from llmling.ipc.messages import HostReport, ProcessStatus, RemoteReply, ResultFrame, RunFrame
from llmling.ipc.nats_connect import NatsConnectError, close_quietly, connect, options_from_config
from llmling.ipc.nats_subjects import Subjects
from llmling.ipc.peer import OnChunk
from llmling.supervisor.replicas import AgentReplicas
from llmling.supervisor.runner import AgentRunner
from llmling.supervisor.slot import TIMEOUT_GRACE

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

    from llmling.config import NatsConfig

Message = dict[str, Any]
OnEvent = Callable[[Message], None]
SpawnTask = Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]]

# A host unheard for this many `host_heartbeat`s no longer counts.
HOST_MISSED = 3
# Hosts remembered at most, and after how many missed heartbeats a silent one is forgotten.
MAX_HOSTS = 1000
HOST_FORGOTTEN = 100
# Replies nobody waits for (a resumed run not re-submitted yet, a duplicate): kept at most this many, this long.
UNCLAIMED_MAX = 10_000
UNCLAIMED_AGE = 600.0
# Replies read from the results consumer per fetch, and seconds one fetch waits.
RESULTS_BATCH = 64
FETCH_WAIT = 2.0
# Seconds between tries of a publish or a fetch while the server does not answer.
RETRY_WAIT = 0.2
# Seconds one publish waits for its PubAck before it is tried again (same Nats-Msg-Id: stored once).
PUBLISH_TIMEOUT = 5.0
# A run without a `run_timeout` still has a deadline: this many seconds per delivery.
UNBOUNDED_RUN = 3600.0


class NatsLink:
    """The supervisor's NATS connection and what every remote agent shares: replies, host reports, advisories."""

    def __init__(self, config: NatsConfig, base_dir: Path, system: str, on_event: OnEvent) -> None:
        self.config = config
        self.subjects = Subjects(config.stream, system)
        self._base_dir = base_dir
        self._on_event = on_event
        self.log = logger.bind(agent="nats")
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        # Invariant: set exactly while the connection is up (cleared by nats-py's disconnect callback).
        self.connected = asyncio.Event()
        # Run id → the future its `submit` waits on (one per run in flight over NATS).
        self._waiting: dict[str, asyncio.Future[RemoteReply]] = {}
        # Replies nobody waited for, oldest first: run id → (loop time received, reply). Bounded by count and age.
        self._unclaimed: OrderedDict[str, tuple[float, RemoteReply]] = OrderedDict()
        # host_id → (loop time of its last report, the report). A host that says it is leaving is removed, one
        # silent for HOST_FORGOTTEN heartbeats is forgotten; at most MAX_HOSTS (the oldest report goes first).
        self.hosts: dict[str, tuple[float, HostReport]] = {}
        # Agents some host has ever reported (then a silent agent is "unreachable", not "starting").
        self._reported: set[str] = set()
        # Agent → run consumer name, for the advisories (the agent a max-deliveries advisory is about).
        self._consumers: dict[str, str] = {}
        self._closing = False

    # -- life -----------------------------------------------------------------------------------------------
    async def start(self, agents: dict[str, int], spawn: SpawnTask) -> None:
        """Connect, ensure the stream and consumers (`agents`: name → max_deliver), start the results task.
        Raises StartupError with one line (the URL, or the missing credential variable)."""
        from nats.errors import Error as NatsError

        try:
            options = options_from_config(self.config, self._base_dir, f"llmling {self.subjects.system}")
            self.nc = await connect(options, reconnect=True, on_disconnect=self._lost, on_reconnect=self._back)
        except NatsConnectError as exc:
            raise StartupError(str(exc)) from None
        self.connected.set()
        self.js = self.nc.jetstream()
        try:
            await ensure_stream(self.js, self.subjects)
            for agent, max_deliver in agents.items():
                await self.add_agent(agent, max_deliver)
            await ensure_results_consumer(self.js, self.subjects, self.config.ack_wait)
            await self.nc.subscribe(self.subjects.hosts, cb=self._on_host_report)
        except (NatsError, TimeoutError) as exc:
            await self.close()
            raise StartupError(
                f"NATS at {self.config.url}: cannot set up the stream {self.subjects.stream}: {exc}"
            ) from None
        spawn(self._results())

    async def add_agent(self, agent: str, max_deliver: int) -> None:
        """Ensure `agent`'s run consumer and listen to its max-deliveries advisories."""
        assert self.js is not None and self.nc is not None
        consumer = self.subjects.consumer(agent)
        await ensure_run_consumer(self.js, self.subjects, agent, self.config.ack_wait, max_deliver)
        if agent not in self._consumers:
            self._consumers[agent] = consumer
            await self.nc.subscribe(
                max_deliveries_advisory(self.subjects, consumer), cb=self._on_advisory_for(agent)
            )

    async def close(self) -> None:
        """After the drain: stop the results task (its fetch ends within FETCH_WAIT) and close the connection."""
        self._closing = True
        if self.nc is not None:
            await close_quietly(self.nc)
        self.connected.clear()

    async def _lost(self) -> None:
        if not self._closing:
            self.log.warning("NATS connection lost; reconnecting (remote agents are unreachable meanwhile)")
        self.connected.clear()

    async def _back(self) -> None:
        self.log.info("NATS connection back")
        self.connected.set()

    # -- replies --------------------------------------------------------------------------------------------
    def claim(self, run_id: str) -> asyncio.Future[RemoteReply]:
        """The future of `run_id`'s reply: done at once when the reply already arrived."""
        future: asyncio.Future[RemoteReply] = asyncio.get_running_loop().create_future()
        kept = self._unclaimed.pop(run_id, None)
        if kept is not None:
            future.set_result(kept[1])
        else:
            self._waiting[run_id] = future
        return future

    def forget(self, run_id: str, future: asyncio.Future[RemoteReply]) -> None:
        if self._waiting.get(run_id) is future:
            del self._waiting[run_id]

    def fail(self, run_id: str, error: AgentRunError) -> bool:
        """Fail the run waiting for `run_id` (max deliveries reached); False when none waits."""
        future = self._waiting.get(run_id)
        if future is None or future.done():
            return False
        future.set_exception(error)
        return True

    def _deliver(self, reply: RemoteReply) -> None:
        future = self._waiting.get(reply["id"])
        if future is not None and not future.done():
            future.set_result(reply)
            return
        # Nobody waits (a resumed run not re-submitted yet, or a duplicate): kept, bounded, for a later submit.
        now = asyncio.get_running_loop().time()
        self._unclaimed[reply["id"]] = (now, reply)
        self._unclaimed.move_to_end(reply["id"])
        while self._unclaimed and (
            len(self._unclaimed) > UNCLAIMED_MAX or now - next(iter(self._unclaimed.values()))[0] > UNCLAIMED_AGE
        ):
            self._unclaimed.popitem(last=False)

    async def _results(self) -> None:
        """The one reader of the results consumer: each reply resolves its run, then is acked."""
        from nats.errors import Error as NatsError

        assert self.js is not None
        sub = None
        while not self._closing:
            try:
                if sub is None:
                    sub = await self.js.pull_subscribe_bind(
                        self.subjects.results_consumer, stream=self.subjects.stream
                    )
                messages = await sub.fetch(RESULTS_BATCH, timeout=FETCH_WAIT)
            except asyncio.CancelledError:
                raise
            except (NatsError, TimeoutError) as exc:
                if not isinstance(exc, TimeoutError) and not self._closing:
                    self.log.debug("reading replies: {}", exc)
                    await asyncio.sleep(RETRY_WAIT)  # NATS is away: nats-py reconnects meanwhile
                continue
            for msg in messages:
                await self._on_reply(msg)

    async def _on_reply(self, msg: Msg) -> None:
        try:
            reply = _remote_reply(decode(msg.data))
        except FrameError as exc:
            self.log.error("dropping a reply that is not a RemoteReply: {}", exc)
            with contextlib.suppress(Exception):
                await msg.term()
            return
        self._deliver(reply)
        with contextlib.suppress(Exception):
            await msg.ack()  # lost: the reply comes again after ack_wait, and is then unclaimed (bounded)

    # -- hosts and advisories -------------------------------------------------------------------------------
    async def _on_host_report(self, msg: Msg) -> None:
        try:
            report = _host_report(decode(msg.data))
        except FrameError as exc:
            self.log.warning("ignoring a host report: {}", exc)
            return
        now = asyncio.get_running_loop().time()
        self._reported.update(report["agents"])
        self.hosts.pop(report["host_id"], None)
        if not report["leaving"]:
            self.hosts[report["host_id"]] = (now, report)  # last in the dict: the most recent
        horizon = now - HOST_FORGOTTEN * self.config.host_heartbeat
        for host_id, (heard, _) in list(self.hosts.items()):
            if heard < horizon or len(self.hosts) > MAX_HOSTS:
                del self.hosts[host_id]

    def processes(self, agent: str) -> list[ProcessStatus]:
        """`agent`'s processes on the hosts heard from within HOST_MISSED heartbeats (none while disconnected)."""
        if not self.connected.is_set():
            return []
        horizon = asyncio.get_running_loop().time() - HOST_MISSED * self.config.host_heartbeat
        return [
            process
            for heard, report in list(self.hosts.values())
            if heard >= horizon
            for process in report["agents"].get(agent, [])
        ]

    def ever_reported(self, agent: str) -> bool:
        return agent in self._reported

    def _on_advisory_for(self, agent: str) -> Callable[[Msg], Coroutine[Any, Any, None]]:
        async def on_advisory(msg: Msg) -> None:
            try:
                await self._max_deliveries(agent, decode(msg.data))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.bind(agent=agent).error("max-deliveries advisory not handled: {}", exc)

        return on_advisory

    async def _max_deliveries(self, agent: str, advisory: Message) -> None:
        """A run of `agent` was delivered `max_deliver` times without an answer: read it, delete it from the
        stream, and fail it with kind "crash" after the attempts used (the router's dead letters take it)."""
        assert self.js is not None
        seq, deliveries = int(advisory["stream_seq"]), int(advisory["deliveries"])
        stored = await self.js.get_msg(self.subjects.stream, seq)
        frame = cast(RunFrame, decode(stored.data or b""))
        with contextlib.suppress(Exception):
            await self.js.delete_msg(self.subjects.stream, seq)
        attempts = int(frame["attempt"]) + deliveries - 1
        reply: RemoteReply = {
            "id": frame["id"],
            "attempt": attempts,
            "host": "",
            "pid": None,
            "reply": {
                "t": "error",
                "re": frame["id"],
                "error": f"no host finished the run in {deliveries} deliveries (each process died or was lost)",
                "kind": "crash",
            },
        }
        logger.bind(agent=agent).error("run {} failed after {} deliveries over NATS", frame["id"], deliveries)
        self._deliver(reply)


class RemoteAgent:
    """An `AgentRunner` whose processes live on agent hosts, reached over NATS JetStream.

    Admission: at most `max_queue` runs published and unanswered (plus those admitted and not submitted yet).
    A run's deadline is `max_deliver` x (run_timeout + grace + ack_wait) + ack_wait: past it, kind "timeout".
    """

    def __init__(
        self,
        name: str,
        link: NatsLink,
        on_event: OnEvent,
        max_queue: int,
        run_timeout: float | None,
        max_deliver: int,
    ) -> None:
        self.name = name
        self.link = link
        self._on_event = on_event
        self.max_queue = max_queue
        self.run_timeout = run_timeout
        self.max_deliver = max_deliver
        self.log = logger.bind(agent=name)
        self.last_error: str | None = None
        # Invariant: submits that published (or are publishing) a run and have no reply yet.
        self.pending = 0
        # Invariant: runs admitted by `admit()` that have not entered `submit` nor been released.
        self.admitted = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopped = asyncio.Event()
        # The last state reported in an `agent_state` event.
        self._reported = ""
        # A remote agent never blocks the system's start: hosts may come later.
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.started.set_result(None)

    @property
    def state(self) -> str:
        if self._stopped.is_set():
            return "stopped"
        if self.link.processes(self.name):
            return "ready"
        if not self.link.connected.is_set() or self.link.ever_reported(self.name):
            return "unreachable"
        return "starting"

    def status(self) -> Message:
        processes = self.link.processes(self.name)
        return {
            "name": self.name,
            "pid": None,
            "state": self.state,
            "restarts": sum(process["restarts"] for process in processes),
            "error": self.last_error,
            "gave_up": False,
            "queued": self.pending,
            "running": sum(process["running"] for process in processes),
            "concurrency": None,
            "max_queue": self.max_queue,
            "placement": "remote",
            "processes": processes,
        }

    # -- admission ------------------------------------------------------------------------------------------
    def check_capacity(self) -> None:
        waiting = self.pending + self.admitted
        if waiting >= self.max_queue:
            raise AgentBusyError(self.name, waiting, 1)

    def admit(self) -> None:
        self.check_capacity()
        self.admitted += 1

    def release(self) -> None:
        self.admitted -= 1

    def authenticate(self, peer: object, token: str) -> bool:
        return False  # no local process: an agent hello naming this agent is refused

    # -- runs -----------------------------------------------------------------------------------------------
    async def submit(
        self, message: RunFrame, on_chunk: OnChunk | None, wait_ready: float = 60.0, admitted: bool = False
    ) -> ResultFrame:
        """Publish the run (waiting up to `wait_ready` s for NATS to take it), wait for its reply."""
        if admitted:
            self.admitted -= 1
        if self._stopped.is_set():
            raise AgentRunError(self.name, "agent is stopped", kind="unavailable")
        message.setdefault("timeout", self.run_timeout)
        run_id = message["id"]
        self.pending += 1
        self._idle.clear()
        future = self.link.claim(run_id)
        chunks = None
        try:
            if not future.done():
                if on_chunk is not None:
                    chunks = await self._subscribe_chunks(run_id, on_chunk)
                await self._publish(message, wait_ready)
            per_delivery = (self.run_timeout or UNBOUNDED_RUN) + TIMEOUT_GRACE + self.link.config.ack_wait
            limit = self.max_deliver * per_delivery + self.link.config.ack_wait
            try:
                async with asyncio.timeout(limit):
                    remote = await future
            except TimeoutError:
                raise AgentRunError(self.name, f"no reply over NATS within {limit:g} s", kind="timeout") from None
        finally:
            self.link.forget(run_id, future)
            if chunks is not None:
                with contextlib.suppress(Exception):
                    await chunks.unsubscribe()
            self.pending -= 1
            if self.pending == 0:
                self._idle.set()
        reply = remote["reply"]
        if reply["t"] == "error":
            error = AgentRunError.from_reply(self.name, reply)
            error.attempts = remote["attempt"]
            raise error
        return cast(ResultFrame, reply)

    async def _publish(self, message: RunFrame, wait: float) -> None:
        """Publish until JetStream stored it (PubAck); through a reconnect, bounded by `wait` seconds."""
        from nats.errors import Error as NatsError

        try:
            data = encode(dict(message))
        except FrameTooLarge as exc:
            raise AgentRunError(self.name, f"run too large for NATS: {exc}", kind="error") from None
        link = self.link
        assert link.js is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        headers = run_msg_id(message["id"], message["attempt"])
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise AgentRunError(
                    self.name,
                    f"NATS at {link.config.url} did not take the run within {wait:g} s",
                    kind="unavailable",
                )
            if not link.connected.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(link.connected.wait(), left)
                continue
            try:
                await link.js.publish(
                    link.subjects.run(self.name), data, timeout=min(PUBLISH_TIMEOUT, left), headers=headers
                )
                return
            except asyncio.CancelledError:
                raise
            except (NatsError, TimeoutError) as exc:
                self.log.debug("publishing run {}: {}; trying again", message["id"], exc)
                await asyncio.sleep(min(RETRY_WAIT, max(0.0, deadline - loop.time())))

    async def _subscribe_chunks(self, run_id: str, on_chunk: OnChunk) -> Any:
        assert self.link.nc is not None

        async def forward(msg: Msg) -> None:
            with contextlib.suppress(FrameError):
                on_chunk(decode(msg.data))

        return await self.link.nc.subscribe(self.link.subjects.chunk(run_id), cb=forward)

    # -- the long-lived task, restart and stop --------------------------------------------------------------
    async def run(self) -> None:
        """Report state changes (hosts come and go, NATS is lost and back) as `agent_state` events."""
        interval = self.link.config.host_heartbeat
        while not self._stopped.is_set():
            self._report()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), interval)
        self._report()

    def _report(self) -> None:
        state = self.state
        if state != self._reported:
            self._reported = state
            hosts = sorted({process["host"] for process in self.link.processes(self.name)})
            self._on_event(
                {"event": "agent_state", "agent": self.name, "state": state, "pid": None, "hosts": hosts}
            )

    async def restart(self, grace: float) -> None:
        """Nothing to restart here: the hosts own the processes (`llmling host` restarts them)."""
        self.log.info("restart of a remote agent: its hosts own its processes; nothing restarted")

    async def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` until no run of this agent waits for its reply; True when none does."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        return self._idle.is_set()

    async def stop(self, grace: float) -> None:
        self._stopped.set()


class HybridAgent:
    """`placement: any`: the local process(es) while one has a free place, else the agent's hosts over NATS.

    Admission is checked against the local queue first, then the remote one; an admitted run counts where it
    was admitted until it enters `submit`, which then picks the side that has a free place at that moment.
    """

    def __init__(self, local: AgentReplicas, remote: RemoteAgent) -> None:
        self.name = local.name
        self.local = local
        self.remote = remote
        self.started = local.started
        # Invariant: admissions counted by `local` / by `remote` and not yet consumed by `submit`/`release`.
        self._admitted_local = 0
        self._admitted_remote = 0

    @property
    def state(self) -> str:
        return "ready" if "ready" in (self.local.state, self.remote.state) else self.local.state

    @property
    def last_error(self) -> str | None:
        return self.local.last_error

    def status(self) -> Message:
        local = self.local.status()
        remote = self.remote.status()
        own: list[ProcessStatus] = local.get("processes") or [
            {
                "host": socket.gethostname(),
                "pid": local["pid"],
                "state": local["state"],
                "restarts": local["restarts"],
                "running": local["running"],
                "queued": local["queued"],
                "error": local["error"],
            }
        ]
        return {
            **local,
            "state": self.state,
            "placement": "any",
            "queued": local["queued"] + remote["queued"],
            "running": local["running"] + remote["running"],
            "processes": [*own, *remote["processes"]],
        }

    def _local_free(self) -> bool:
        local = self.local
        return local.state == "ready" and local.running + local.queued < local.places

    def check_capacity(self) -> None:
        try:
            self.local.check_capacity()
        except AgentBusyError:
            self.remote.check_capacity()

    def admit(self) -> None:
        try:
            self.local.admit()
            self._admitted_local += 1
        except AgentBusyError:
            self.remote.admit()
            self._admitted_remote += 1

    def release(self) -> None:
        if self._admitted_local:
            self._admitted_local -= 1
            self.local.release()
        else:
            self._admitted_remote -= 1
            self.remote.release()

    def authenticate(self, peer: Any, token: str) -> bool:
        return self.local.authenticate(peer, token)

    async def submit(
        self, message: RunFrame, on_chunk: OnChunk | None, wait_ready: float = 60.0, admitted: bool = False
    ) -> ResultFrame:
        if admitted:
            self.release()
        runner: AgentRunner = self.local if self._local_free() else self.remote
        return await runner.submit(message, on_chunk, wait_ready)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self.local.run())
            group.create_task(self.remote.run())

    async def restart(self, grace: float) -> None:
        await self.local.restart(grace)

    async def drain(self, timeout: float) -> bool:
        local, remote = await asyncio.gather(self.local.drain(timeout), self.remote.drain(timeout))
        return local and remote

    async def stop(self, grace: float) -> None:
        await asyncio.gather(self.local.stop(grace), self.remote.stop(grace))


def _remote_reply(value: Message) -> RemoteReply:
    """`value` checked as a RemoteReply (FrameError naming the field that is wrong)."""
    reply = value.get("reply")
    for field, kind in (("id", str), ("attempt", int), ("host", str)):
        if not isinstance(value.get(field), kind):
            raise FrameError(f"field {field!r} missing or not a {kind.__name__}")
    if not isinstance(reply, dict) or reply.get("t") not in ("result", "error"):
        raise FrameError("field 'reply' is not a result or error frame")
    return cast(RemoteReply, value)


def _host_report(value: Message) -> HostReport:
    """`value` checked as a HostReport (FrameError naming the field that is wrong)."""
    for field, kind in (("host", str), ("host_id", str), ("agents", dict), ("leaving", bool)):
        if not isinstance(value.get(field), kind):
            raise FrameError(f"field {field!r} missing or not a {kind.__name__}")
    agents: dict[str, list[ProcessStatus]] = {}
    for agent, processes in value["agents"].items():
        if not isinstance(processes, list) or not all(isinstance(p, dict) for p in processes):
            raise FrameError(f"agents.{agent} is not a list of processes")
        agents[agent] = [_process(value["host"], process) for process in processes]
    return cast(HostReport, {**value, "agents": agents})


def _process(host: str, value: Message) -> ProcessStatus:
    """One process of a host report in the shape every status uses (counts a host left out are 0)."""
    if not isinstance(value.get("state"), str):
        raise FrameError("a process without a 'state'")
    pid, error = value.get("pid"), value.get("error")
    return {
        "host": str(value.get("host") or host),
        "pid": pid if isinstance(pid, int) else None,
        "state": value["state"],
        "restarts": _count(value, "restarts"),
        "running": _count(value, "running"),
        "queued": _count(value, "queued"),
        "error": error if isinstance(error, str) else None,
    }


def _count(value: Message, field: str) -> int:
    count = value.get(field) or 0
    if not isinstance(count, int) or count < 0:
        raise FrameError(f"a process's {field!r} is not a count")
    return count


__all__ = ["HybridAgent", "NatsLink", "RemoteAgent"]
