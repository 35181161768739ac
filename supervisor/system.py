"""`Supervisor`: one running system. Owns the control socket, the forkserver, the slots and the services.

Every long-lived task is owned by one root TaskGroup that lives in the supervisor's main task. `start()`
returns once every agent is READY (or raises StartupError after tearing everything down); `stop()` drains
in-flight runs up to the config's `shutdown_timeout`, stops the agents, then the model services, and removes
the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Coroutine
from typing import Any

from loguru import logger

from llmling.agent_proc import preload
from llmling.agent_proc.spec import AgentSpec
from llmling.config import SystemConfig
from llmling.errors import LLMlingError, StartupError, StartupInterrupted
from llmling.ipc.fdbudget import fd_budget, raise_nofile_limit
from llmling.ipc.jetstream import max_deliveries
from llmling.ipc.paths import socket_path
from llmling.ipc.peer import Peer
from llmling.ipc.server import ListenError, UnixServer
from llmling.supervisor.background import BackgroundRuns
from llmling.supervisor.control import Control
from llmling.supervisor.dead_letters import DeadLetters
from llmling.supervisor.environment import agent_environment, register_secrets
from llmling.supervisor.events import EventStream
from llmling.supervisor.history import HistoryService
from llmling.supervisor.journal import Journal, journal_path
from llmling.supervisor.logs import LogService
from llmling.supervisor.model_service import ModelService
from llmling.supervisor.nats_control import NatsControl
from llmling.supervisor.observers import add_observers
from llmling.supervisor.reload import Reloader, ReloadError, ReloadPlan
from llmling.supervisor.remote import HybridAgent, NatsLink, RemoteAgent
from llmling.supervisor.replicas import AgentReplicas
from llmling.supervisor.restarts import RestartRequests
from llmling.supervisor.router import Route, Router
from llmling.supervisor.routes import route_from_config
from llmling.supervisor.runner import AgentRunner
from llmling.supervisor.service import Service
from llmling.supervisor.slot import AgentSlot, SlotPolicy
from llmling.supervisor.spawner import Spawner
from llmling.supervisor.triggers import Triggers

Message = dict[str, Any]
OnEvent = Callable[[Message], None]
# Seconds an agent gets to exit after `shutdown` before SIGTERM.
AGENT_GRACE = 2.0


class Supervisor:
    def __init__(
        self,
        config: SystemConfig,
        socket: str | os.PathLike[str] | None = None,
        on_event: OnEvent | None = None,
        log_level: str | None = "INFO",
        require_all: bool = False,
        parallel_load: bool = True,
    ) -> None:
        self.config = config
        # With require_all, one agent failing its start fails the system's start; without it, the system
        # starts when at least one agent is READY and the failed ones keep retrying with backoff.
        self._require_all = require_all
        # Agents start concurrently; with parallel_load=False each waits for the previous one's outcome.
        self._parallel_load = parallel_load
        self.socket_path = socket_path(config.name, socket)
        # Invariant: every listener is called synchronously, in order, for every event; none may raise.
        self._listeners: list[OnEvent] = [on_event] if on_event else []
        self._log_level = log_level
        self.log = logger.bind(agent="supervisor")
        self._spawner = Spawner(preload.modules(config.needs_llm, config.needs_mcp))
        # Agents' connections are exempt from the client limits: over the client cap, a connection whose first
        # frame is an agent's hello may stay; once authenticated it is trusted (see _on_message).
        self._server = UnixServer(self.socket_path, self._on_message, exempt=_is_agent_hello)
        self.models = {name: ModelService(name) for name in sorted(config.local_models)}
        # With `transport.nats`: the NATS connection of the agents placed `remote`/`any` (connected in `_run`).
        nats = config.transport.nats
        self.nats = NatsLink(nats, config.base_dir, config.name, self.emit) if nats is not None else None
        # Each agent's runner: its local processes (`replicas: N`), its hosts over NATS, or both.
        self.slots: dict[str, AgentRunner] = {name: self._new_runner(name) for name in config.agents}
        # Invariant: the agent processes this system counts in `fd_budget().agents` while it runs.
        self._budgeted = 0
        # The journal of accepted units (durability sync/batch): written before a unit is acknowledged or
        # forwarded, read back by the next start. Opened in `_run` (a journal that cannot open fails the start).
        self.journal = (
            Journal(journal_path(config.state_path), config.durability) if config.durability != "off" else None
        )
        # After stop(): the accepted units left without an outcome (in the journal for the next start; with
        # durability off, lost). `llmling up` exits non-zero when it is not 0.
        self.left = 0
        self.router = Router(
            self.slots,
            config.max_hops,
            self._spawn_task,
            self.emit,
            journal=self.journal,
            # As of now: a reload replaces the config.
            retry=lambda agent: self.config.agents[agent].retry,
        )
        for route in self._config_routes(config, set(config.agents)):
            self.router.connect(route)
        self.control = Control(self.router, self.status, self.request_stop, self._spawn_task)
        # `llmling restart AGENT`: in-flight runs get the drain's time to finish.
        RestartRequests(self.control, self.router, config.shutdown_timeout, self._spawn_task)
        # Started after every agent is READY, stopped (in reverse order) before the drain. A service owns
        # its long-lived tasks through `spawn_service_task`.
        self.services: list[Service] = []
        # Started after `services`, stopped after the agents: services that report runs (telemetry), so a run
        # that ends during the drain is reported too.
        self.late_services: list[Service] = []
        self._group: asyncio.TaskGroup | None = None
        self._main: asyncio.Task[None] | None = None
        self._started: asyncio.Future[None] | None = None
        # Invariant: True once start() succeeded (every service runs); `status` says "ready" from then on.
        self._started_ok = False
        self._stop_requested = asyncio.Event()
        self._force = asyncio.Event()
        # Invariant: the request tasks of the root group that have not finished.
        self._requests: set[asyncio.Task[Any]] = set()
        # The run history: records finished runs in SQLite, answers `history`, seeds (re)started
        # agents (AgentSpec.history). The first service: started first, stopped last.
        self.history = HistoryService(self)
        self.services.append(self.history)
        # Automation: the event stream (`subscribe`), the triggers of every agent (one service per
        # kind in use; `trigger`/`triggers`) and background runs (`background_start`/`_stop`/`_list`).
        self.events = EventStream(self)
        # The agents' output (loguru records, fd 1/2 lines): rings, rotating files, `logs` requests.
        self.logs = LogService(self)
        self.services.append(self.logs)
        # Dead letters: `dead_letters`, `retry`, `dead_letters_purge`.
        self.dead_letters = DeadLetters(self)
        self.triggers = Triggers(self)
        self.background = BackgroundRuns(self)
        # `reload` (and SIGHUP / `up --reload` through `serve.py`): re-read the config file, apply the change.
        self.reloader = Reloader(self)
        self.control.register("reload", lambda peer, message: self.request_reload(peer, message))
        # Prometheus `/metrics` (`metrics:`) and OpenTelemetry spans (`telemetry:`), when configured.
        add_observers(self)
        # With `transport.nats`: the same control requests from remote clients, over `self.nats`'s connection
        # (served from its start in `_run` until just before it closes).
        self.nats_control = NatsControl(self.control, self.nats.subjects) if self.nats is not None else None

    # -- wiring ---------------------------------------------------------------------------------------------
    def add_listener(self, listener: OnEvent) -> None:
        """Receive every event (agent state changes, finished runs, ...) as a dict with an `event` key."""
        self._listeners.append(listener)

    def emit(self, event: Message) -> None:
        """Report an event (a dict with an `event` key) to every listener; a failing listener is logged."""
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                self.log.exception("event listener failed")

    @property
    def stopping(self) -> bool:
        """True once a stop was requested: services start nothing new from then on."""
        return self._stop_requested.is_set()

    def spawn_service_task(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        """Run a service's long-lived task in the root group; the service's `stop()` must end it."""
        if self._group is None:
            coro.close()
            raise RuntimeError("the supervisor is not running")
        return self._group.create_task(self._guarded(coro), name=name)

    async def _guarded(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """The one guard of every request, run and service task: a failure is logged, never raised into the
        root group (where it would cancel the whole system)."""
        try:
            return await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            self.log.exception("task failed")
            return None

    def _spawn_task(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a request (a client's send, a downstream run) as a task of the root group; the shutdown
        cancels the ones still running after the drain."""
        task = self.spawn_service_task(coro)
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)
        return task

    spawn_request = _spawn_task

    def _new_runner(self, name: str) -> AgentRunner:
        """The runner of `name` by its `placement`: its local process, its hosts over NATS, or both."""
        agent = self.config.agents[name]
        if agent.placement == "local" or self.nats is None:
            return self._new_slot(name)
        remote = RemoteAgent(
            name, self.nats, self.emit, agent.max_queue, agent.run_timeout, self._max_deliver(name)
        )
        return remote if agent.placement == "remote" else HybridAgent(self._new_slot(name), remote)

    def _max_deliver(self, name: str) -> int:
        retry = self.config.agents[name].retry
        return max_deliveries(retry.max_attempts, "crash" in retry.on)

    def _new_slot(self, name: str) -> AgentRunner:
        agent = self.config.agents[name]
        return AgentReplicas(
            name,
            self._spec_maker(name),
            self._spawner,
            self.emit,
            SlotPolicy.from_config(self.config, agent),
            replicas=agent.replicas,
        )

    def _local_processes(self, config: SystemConfig, name: str) -> int:
        """How many of `name`'s processes are children of this supervisor (none when all its hosts are remote)."""
        agent = config.agents[name]
        return 0 if agent.placement == "remote" and self.nats is not None else agent.replicas

    def _budget(self, processes: int) -> None:
        """Keep descriptors free for `processes` more (or fewer) agent processes."""
        fd_budget().agents += processes
        self._budgeted += processes

    @staticmethod
    def _config_routes(config: SystemConfig, agents: set[str]) -> list[Route]:
        """The routes of `agents`' `connections:` (raises StartupError naming one that cannot be imported)."""
        return [
            route_from_config(name, connection, str(config.base_dir))
            for name, agent in config.agents.items()
            if name in agents
            for connection in agent.connections
        ]

    def _spec_maker(self, name: str) -> Callable[[str], AgentSpec]:
        def make(token: str) -> AgentSpec:
            # The config as of this (re)start: a reload changes what the next process gets.
            agent = self.config.agents[name]
            register_secrets(agent)  # masked in every log line of this process from now on
            local = agent.local_model
            # Served here: the agent talks to the model service as to any OpenAI-compatible server.
            config = agent.model_copy(update={"model": f"openai/{local}"}) if local else agent
            return AgentSpec(
                name=name,
                config=config,
                socket_path=str(self.socket_path),
                token=token,
                base_dir=str(self.config.base_dir),
                api_base=self.models[local].api_base if local else None,
                log_level=self._log_level,
                # Scrubbed: the allow-list and what this agent's config names, as they are when it (re)starts.
                env=agent_environment(agent),
                history=self.history.resume(name),
            )

        return make

    def _on_message(self, peer: Peer, message: Message) -> None:
        slot = peer.info
        if isinstance(slot, AgentSlot) and message.get("t") == "log":
            self.logs.on_agent_log(slot.name, message, slot.replica)
        elif isinstance(slot, AgentSlot):
            slot.on_agent_message(peer, message)
        elif message.get("t") == "hello" and message.get("role") == "agent":
            # Each local process has its own token: the replica that presents it gets the connection.
            runner = self.slots.get(str(message.get("agent")))
            token = str(message.get("token", ""))
            if isinstance(runner, AgentReplicas | AgentSlot | HybridAgent) and runner.authenticate(peer, token):
                self._server.trust(peer)
                peer.reply(message, {"t": "ok"})
            else:
                peer.reply(message, {"t": "error", "error": "authentication failed"})
                peer.close()
        else:
            self.control.handle(peer, message)

    # -- reload ---------------------------------------------------------------------------------------------
    def request_reload(self, peer: Peer | None = None, message: Message | None = None) -> None:
        """Re-read the config file and apply it, on a task of the root group (SIGHUP, `up --reload`, the
        `reload` request, which gets the outcome as its answer). A refused reload changes nothing; it is
        logged and reported as a `reload_failed` event."""
        if self._group is None or self.stopping:
            if peer is not None and message is not None:
                peer.reply(message, {"t": "error", "error": "the system is not running"})
            return

        async def reload() -> None:
            try:
                plan = await self.reloader.reload()
            except LLMlingError as exc:
                self.log.error("reload refused: {}", exc)
                self.emit({"event": "reload_failed", "name": self.config.name, "error": str(exc)})
                if peer is not None and message is not None:
                    peer.reply(message, {"t": "error", "error": str(exc)})
                return
            if peer is not None and message is not None:
                peer.reply(message, {"t": "ok", "summary": plan.summary(), **plan.info()})

        self._spawn_task(reload())

    async def apply_config(self, new: SystemConfig, plan: ReloadPlan) -> None:
        """Apply a planned reload (see `reload.py`): what goes away first, then the agents, then what routes
        and fires runs. Raises ReloadError when a new route cannot be imported (then nothing was changed)."""
        if self._group is None:
            raise ReloadError("the system is not running")
        touched = set(plan.routes) - set(plan.removed)
        try:
            routes = self._config_routes(new, touched)
        except StartupError as exc:
            raise ReloadError(f"{exc}; nothing was changed") from None
        old, self.config = self.config, new
        self.router.max_hops = new.max_hops
        drain = new.shutdown_timeout
        self.background.stop_jobs(plan.background)
        await self.triggers.stop_kinds(plan.trigger_kinds)
        for name in plan.removed:
            self.router.remove_agent(name)
        for name in plan.removed:
            slot = self.slots[name]
            await slot.drain(drain)
            await slot.stop(AGENT_GRACE)
            del self.slots[name]
            self._budget(-self._local_processes(old, name))
        for name in plan.added:
            slot = self.slots[name] = self._new_runner(name)
            if self.nats is not None and new.agents[name].placement != "local":
                await self.nats.add_agent(name, self._max_deliver(name))
            self._budget(self._local_processes(new, name))
            self.router.add_agent(name)
            self._group.create_task(slot.run(), name=f"slot-{name}")
        await asyncio.gather(
            *(self._apply_agent(name, old, drain, name in plan.changed) for name in plan.changed + plan.resized)
        )
        self.router.replace_config_routes(touched, routes)
        await self.triggers.start_kinds(new, plan.trigger_kinds)
        self.background.start_jobs(new, plan.background)

    async def _apply_agent(self, name: str, old: SystemConfig, drain: float, restart: bool) -> None:
        """A changed agent: a new `replicas` count adds or removes processes (the others keep running); with
        `restart` (another of its own settings changed) every process then restarts gracefully."""
        runner, before, after = self.slots[name], old.agents[name].replicas, self.config.agents[name].replicas
        # The local processes (of `placement: any`, its local side); a remote agent's hosts count their own.
        local = runner.local if isinstance(runner, HybridAgent) else runner
        if isinstance(local, AgentReplicas) and before != after:
            self._budget(after - before)
            await local.resize(after, drain)
        if restart:
            await runner.restart(drain)

    def status(self) -> Message:
        return {
            "name": self.config.name,
            "pid": os.getpid(),
            "socket": str(self.socket_path),
            # "starting" until every agent's start has an outcome and every service (triggers, timers) runs.
            "state": "stopping" if self.stopping else "ready" if self._started_ok else "starting",
            "pending_runs": self.router.busy,
            "agents": [slot.status() for slot in self.slots.values()],
            # Per agent since this supervisor started: runs, prompt/completion/total tokens, cost (USD or None).
            "totals": self.history.totals(),
            "models": [
                {
                    "name": m.name,
                    "pid": m.process.pid if m.process else None,
                    "api_base": m.api_base,
                    "restarts": m.restarts,
                }
                for m in self.models.values()
            ],
        }

    # -- life -----------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start everything; return once every agent is READY. Raises StartupError (nothing is left running)."""
        loop = asyncio.get_running_loop()
        self._started = loop.create_future()
        self._main = asyncio.create_task(self._run(), name=f"llmling-supervisor-{self.config.name}")
        done, _ = await asyncio.wait({self._started, self._main}, return_when=asyncio.FIRST_COMPLETED)
        if self._started in done and self._started.exception() is None:
            return
        error = self._started.exception() if self._started.done() else None
        with contextlib.suppress(BaseException):
            await self._main
        raise error or StartupError("the supervisor ended during start-up")

    def request_stop(self, force: bool = False) -> None:
        """Begin shutdown (from a signal handler or a `stop` request); `force` skips the drain."""
        if force:
            self._force.set()
        self._stop_requested.set()

    async def wait_stopped(self) -> None:
        if self._main is not None:
            await asyncio.shield(self._main)

    async def stop(self, force: bool = False) -> None:
        self.request_stop(force)
        await self.wait_stopped()

    async def _run(self) -> None:
        assert self._started is not None
        raise_nofile_limit()  # before the forkserver starts: it and the agents inherit the limit
        self._spawner.start()  # before any thread: the spawner's worker thread comes later
        try:
            await self._server.start()
        except ListenError as exc:
            self._spawner.close()
            self._started.set_exception(StartupError(str(exc)))
            return
        if self.journal is not None:
            try:
                self.journal.open()
            except StartupError as exc:
                self._started.set_exception(exc)
                await self._server.close()
                self._spawner.close()
                return
        # Descriptors kept free for spawning and serving our agents' processes.
        self._budget(sum(self._local_processes(self.config, name) for name in self.config.agents))
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                if self.journal is not None:
                    self.journal.start(group.create_task)
                try:
                    if self.nats is not None:  # the stream and consumers exist before any run is published
                        remote = {
                            n: self._max_deliver(n)
                            for n, a in self.config.agents.items()
                            if a.placement != "local"
                        }
                        await self.nats.start(remote, self.spawn_service_task)
                    if self.nats_control is not None and self.nats is not None:
                        await self.nats_control.start(self.nats.nc)
                    await self._start_all(group)
                except StartupError as exc:
                    self._started.set_exception(exc)
                    await self._shutdown(drain=False)
                    return
                self._started.set_result(None)
                self._started_ok = True
                await self._resume()
                self.emit(
                    {
                        "event": "system_ready",
                        "name": self.config.name,
                        "agents": len(self.slots),
                        "failed": [slot.name for slot in self.slots.values() if slot.state == "failed"],
                    }
                )
                await self._stop_requested.wait()
                await self._shutdown(drain=not self._force.is_set())
        finally:
            self._budget(-self._budgeted)
            self._group = None
            if self.journal is not None:
                self.journal.abandon()  # only when the shutdown could not close it (the group failed)
            if self.nats_control is not None:
                await self.nats_control.close()  # when the shutdown could not (the group failed)
            await self._server.close()
            self._spawner.close()
            self.emit({"event": "system_stopped", "name": self.config.name})

    async def _start_all(self, group: asyncio.TaskGroup) -> None:
        model_starts = [group.create_task(model.start()) for model in self.models.values()]
        waits = [*model_starts, self._start_slots(group)]
        stop_wait = asyncio.ensure_future(self._stop_requested.wait())
        try:
            gathered = asyncio.gather(*waits)
            done, _ = await asyncio.wait({gathered, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            if stop_wait in done:
                gathered.cancel()
                with contextlib.suppress(BaseException):
                    await gathered
                raise StartupInterrupted("start-up interrupted")
            gathered.result()
        finally:
            stop_wait.cancel()
        failed = [slot for slot in self.slots.values() if slot.state == "failed"]
        if failed and (self._require_all or len(failed) == len(self.slots)):
            raise StartupError("; ".join(f"agent {slot.name!r}: {slot.last_error}" for slot in failed))
        for model in self.models.values():
            group.create_task(model.supervise(), name=f"model-{model.name}")
        for service in (*self.services, *self.late_services):
            await service.start()

    async def _stop_services(self, services: list[Service]) -> None:
        """Stop `services` in reverse order; one that fails to stop is logged, the others still stop."""
        for service in reversed(services):
            try:
                await service.stop()
            except Exception:
                self.log.exception("service {} failed to stop", service.name)

    async def _resume(self) -> None:
        """Deliver the units an earlier run of this system accepted and did not finish."""
        if self.journal is None:
            return
        units = await self.journal.open_units()
        if units:
            self.log.info("resuming {} accepted runs", len(units))
            self.emit({"event": "resuming", "name": self.config.name, "count": len(units)})
            self.router.resume(units)

    async def _start_slots(self, group: asyncio.TaskGroup) -> None:
        for slot in self.slots.values():
            group.create_task(slot.run(), name=f"slot-{slot.name}")
            if not self._parallel_load:
                await slot.started
        await asyncio.gather(*(slot.started for slot in self.slots.values()))

    async def _shutdown(self, drain: bool) -> None:
        self.log.info("shutting down{}", "" if drain else " (no drain)")
        self.emit({"event": "system_stopping", "name": self.config.name})
        await self._stop_services(self.services)
        # New sends are refused from here on; the socket keeps listening through the drain, so a client that
        # connects now is told the system is shutting down instead of finding no system.
        self.router.accepting = False
        if drain and self.router.busy:
            drained = asyncio.ensure_future(self.router.drain(self.config.shutdown_timeout))
            forced = asyncio.ensure_future(self._force.wait())
            await asyncio.wait({drained, forced}, return_when=asyncio.FIRST_COMPLETED)
            drained.cancel()
            forced.cancel()
        # From here on a run that fails (its agent is being stopped) stays in the journal as it is.
        self.router.closing = True
        self.left = self.router.busy
        self._server.stop_listening()
        await asyncio.gather(*(slot.stop(AGENT_GRACE) for slot in self.slots.values()))
        await asyncio.gather(*(model.stop() for model in self.models.values()))
        await self._stop_services(self.late_services)
        if self.nats_control is not None:
            await self.nats_control.close()  # remote clients are told the system stopped
        if self.nats is not None:
            await self.nats.close()
        # Whatever request is still running (client sends, downstream runs) ends now.
        for task in list(self._requests):
            task.cancel()
        if self.journal is not None:
            if self._requests:
                await asyncio.wait(set(self._requests))
            try:
                self.left = await self.journal.count_open()
            except LLMlingError as exc:
                self.log.error("{}", exc)
            await self.journal.close()
            if self.left:
                self.log.warning(
                    "{} accepted runs left in the journal {} for the next start", self.left, self.journal.path
                )

    # -- context manager ------------------------------------------------------------------------------------
    async def __aenter__(self) -> Supervisor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop(force=exc[0] is not None)


def _is_agent_hello(message: Message) -> bool:
    return message.get("t") == "hello" and message.get("role") == "agent"


__all__ = ["Supervisor"]
