"""`AgentHost`: `llmling host` — runs some agents' processes on this machine and serves their runs from NATS.

The host is a composition: a `Supervisor` of the host's own local system (`host_plan.host_config`: only its
agents, no triggers, routes, journal or transport) keeps the processes (forkserver, one slot or replica set per
agent, READY, heartbeat, restarts, scrubbed environments, their output) and listens on the host's own agent
socket; `HostServing`, one of that supervisor's services, connects those processes to the system's JetStream
consumers (`serve_agent`, one per agent) and publishes a `HostReport` to `hosts` every `host_heartbeat` s.

Order: NATS is connected first (refused: one line, nothing started), then the processes start; the serving
starts once they are READY (a service), and stops before them: no new fetch, runs in flight get up to
`shutdown_timeout` (a second Ctrl+C ends that wait), the rest are nak'ed (redelivered elsewhere), a last report
says `leaving`, then the processes stop and the NATS connection is closed. A lost NATS connection is retried
forever (nats-py's reconnect); the processes keep running meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import uvloop

from llmling.config import SystemConfig
from llmling.errors import StartupError, StartupInterrupted
from llmling.ipc.jetstream import encode, ensure_run_consumer, ensure_stream, max_deliveries
from llmling.ipc.messages import HostReport, ProcessStatus
from llmling.ipc.nats_connect import NatsConnectError, close_quietly, connect, options_from_config
from llmling.ipc.nats_subjects import Subjects
from llmling.ipc.peer import Peer
from llmling.supervisor.host_plan import HostError, host_config, host_name, host_socket, pick_agents
from llmling.supervisor.notify import SystemdNotifier
from llmling.supervisor.replicas import AgentReplicas
from llmling.supervisor.serve import stop_on_signals
from llmling.supervisor.spawner import stop_helpers
from llmling.supervisor.system import Supervisor

if TYPE_CHECKING:
    from nats.aio.client import Client

Message = dict[str, Any]
OnEvent = Callable[[Message], None]


class HostSystem(Supervisor):
    """The host's local system: a Supervisor that refuses `reload` (its config is a reduced copy; a changed
    config file reaches a host when it is restarted)."""

    def request_reload(self, peer: Peer | None = None, message: Message | None = None) -> None:
        self.log.warning("reload refused: an agent host applies a changed config when it is restarted")
        if peer is not None and message is not None:
            peer.reply(message, {"t": "error", "error": "an agent host does not reload; restart it"})


class AgentHost:
    """One `llmling host`: `run()` until `request_stop()`; returns 0 (or raises HostError/StartupError)."""

    def __init__(
        self,
        config: SystemConfig,
        only: list[str] | None = None,
        replicas: dict[str, int] | None = None,
        name: str | None = None,
        socket: str | None = None,
        on_event: OnEvent | None = None,
        log_level: str = "INFO",
    ) -> None:
        self.source = config
        self.agents = pick_agents(config, only, replicas or {})
        self.name = host_name(name)
        assert config.transport.nats is not None  # pick_agents refused a config without it
        self.nats_config = config.transport.nats
        self.subjects = Subjects(self.nats_config.stream, config.name)
        # A fresh id per host process: the supervisor tells a restarted host from the one it replaces.
        self.host_id = uuid.uuid4().hex
        local = host_config(config, self.agents, self.name)
        self.system = HostSystem(
            local, socket=host_socket(config.name, self.name, socket), on_event=on_event, log_level=log_level
        )
        for runner in self.system.slots.values():
            if isinstance(runner, AgentReplicas):
                runner.host = self.name  # the host's name everywhere, also in `status` on its own socket
        self.log = self.system.log.bind(agent=f"host {self.name}")
        self.nats: Client | None = None
        # True once the host closes its NATS connection itself (the disconnect that follows is no loss).
        self.closing = False
        self.serving = HostServing(self)
        self.system.services.append(self.serving)

    def request_stop(self, force: bool = False) -> None:
        """Begin the stop (see the module's docstring). `force` (a second Ctrl+C) ends the wait for the runs in
        flight: they are nak'ed at once (JetStream gives them to another place, under the same id)."""
        if force:
            self.serving.cut.set()
        self.system.request_stop(force)

    async def connect(self) -> None:
        """Connect to NATS and make sure the stream and this host's consumers exist (same settings as the
        supervisor's, from the same config). Raises StartupError with one line: nothing has started yet."""
        from nats.errors import Error as NatsError

        try:
            options = options_from_config(self.nats_config, self.source.base_dir, f"llmling-host {self.name}")
            self.nats = await connect(options, on_disconnect=self._lost, on_reconnect=self._back)
        except NatsConnectError as exc:
            raise StartupError(str(exc)) from None
        js = self.nats.jetstream()
        try:
            await ensure_stream(js, self.subjects)
            for name in self.agents:
                retry = self.source.agents[name].retry
                deliveries = max_deliveries(retry.max_attempts, "crash" in retry.on)
                await ensure_run_consumer(js, self.subjects, name, self.nats_config.ack_wait, deliveries)
        except (NatsError, OSError, TimeoutError) as exc:
            self.closing = True
            await close_quietly(self.nats)
            self.nats = None
            raise StartupError(
                f"NATS at {options.url}: cannot set up the stream {self.subjects.stream}: {exc}"
            ) from None

    async def _lost(self) -> None:
        if self.nats is None or self.closing:
            return  # the first connect failing, or our own close: nothing to warn about
        self.log.warning("lost NATS; reconnecting (the agents keep running)")
        self.system.emit({"event": "nats", "state": "disconnected", "host": self.name})

    async def _back(self) -> None:
        self.log.info("NATS reconnected")
        self.system.emit({"event": "nats", "state": "connected", "host": self.name})

    async def run(self) -> int:
        """Connect, start the processes and serve until asked to stop; 0 then. Raises StartupError."""
        await self.connect()
        try:
            try:
                await self.system.start()
            except StartupInterrupted:
                return 0
            await self.system.wait_stopped()
            return 0
        finally:
            if self.nats is not None:
                self.closing = True
                await close_quietly(self.nats)

    def report(self, leaving: bool = False) -> HostReport:
        """The `HostReport` of this host's processes as they are now."""
        return {
            "host": self.name,
            "host_id": self.host_id,
            "pid": os.getpid(),
            "agents": {name: processes(runner.status(), self.name) for name, runner in self.system.slots.items()},
            "leaving": leaving,
        }


def processes(status: Message, host: str) -> list[ProcessStatus]:
    """One entry per process of an agent's status (a replica set lists its processes under `processes`)."""
    return [
        {
            "host": host,
            "pid": item["pid"],
            "state": item["state"],
            "restarts": item["restarts"],
            "running": item["running"],
            "queued": item["queued"],
            "error": item["error"],
        }
        for item in status.get("processes") or [status]
    ]


class HostServing:
    """The host's service: its agents' JetStream consumers, and its reports. Started once every process is
    READY; stopped before them (see the module's docstring)."""

    name = "nats"

    def __init__(self, host: AgentHost) -> None:
        self.host = host
        self._stop = asyncio.Event()
        # Set by a second Ctrl+C: the runs in flight are nak'ed without waiting for `shutdown_timeout`.
        self.cut = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []

    async def start(self) -> None:
        from llmling.supervisor.remote_serve import serve_agent

        host, system = self.host, self.host.system
        assert host.nats is not None
        js = host.nats.jetstream()
        for name, runner in system.slots.items():
            assert isinstance(runner, AgentReplicas)  # a host's reduced config places every agent locally
            # One run fetched per free place (`concurrency` per process of the agent).
            serving = serve_agent(
                js,
                host.subjects,
                name,
                runner,
                host.nats_config.ack_wait,
                host=host.name,
                grace=system.config.shutdown_timeout,
                cut=self.cut,
            )
            self._tasks.append(system.spawn_service_task(serving, name=f"serve-{name}"))
        self._tasks.append(system.spawn_service_task(self._reports(), name="host-reports"))

    async def _reports(self) -> None:
        host = self.host
        interval = host.nats_config.host_heartbeat
        while not self._stop.is_set():
            await self._publish(host.report())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval)

    async def _publish(self, report: HostReport) -> None:
        from nats.errors import Error as NatsError

        nats = self.host.nats
        if nats is None or not nats.is_connected:
            return  # reports are periodic: the next one after the reconnect says the same
        try:
            await nats.publish(self.host.subjects.hosts, encode(dict(report)))
        except (NatsError, OSError) as exc:
            self.host.log.warning("host report not sent: {}", exc)

    async def stop(self) -> None:
        """No new fetch; runs in flight get `shutdown_timeout` (inside `serve_agent`), the rest are nak'ed;
        then the last report (`leaving`) goes out."""
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        await self._publish(self.host.report(leaving=True))
        if self.host.nats is not None and self.host.nats.is_connected:
            from nats.errors import Error as NatsError

            with contextlib.suppress(NatsError, OSError, TimeoutError):
                await self.host.nats.flush(2)


async def serve_host(host: AgentHost) -> int:
    """`host.run()` with signals (SIGINT/SIGTERM: the graceful stop; see `AgentHost.request_stop`) and
    systemd's notify protocol (READY=1 once the agents are READY and NATS is connected, STATUS=, WATCHDOG=1,
    STOPPING=1)."""
    notifier = SystemdNotifier.from_env()  # before the forkserver starts: no child inherits NOTIFY_SOCKET
    watchdog: asyncio.Task[None] | None = None
    if notifier is not None:
        host.system.add_listener(notifier.on_event)
        watchdog = asyncio.create_task(notifier.watchdog(), name="sd-watchdog")
    loop = asyncio.get_running_loop()
    stop_on_signals(loop, host.request_stop)
    try:
        return await host.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if watchdog is not None:
            watchdog.cancel()
            await asyncio.wait({watchdog})
        if notifier is not None:
            notifier.close()


def run_host(config: SystemConfig, **kwargs: Any) -> int:
    """`llmling host`: run an AgentHost on a uvloop loop; raises HostError/StartupError (one line each)."""

    async def main() -> int:
        return await serve_host(AgentHost(config, **kwargs))

    try:
        return uvloop.run(main())
    finally:
        stop_helpers()


__all__ = ["AgentHost", "HostError", "HostServing", "processes", "run_host", "serve_host"]
