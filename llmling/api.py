"""The Python API: `AgentPool`, `Agent`, and connections made with `>>`.

A pool runs the same supervisor as `llmling up`, in the caller's event loop: agents live in their own
processes and every `run` crosses the IPC. A standalone `Agent(...)` is a pool of one, for the same reasons
(the same runtime, history kept in the agent's process, crash isolation, one code path); it costs one
forkserver start, which is shared with any other pool in the process.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

from loguru import logger

from llmling.config import AgentConfig, ConnectionConfig, SystemConfig, load_config
from llmling.errors import AgentRunError, UnknownAgentError
from llmling.ipc.paths import runtime_dir
from llmling.logs import enable_from_environment, library_level
from llmling.messages import ChatMessage
from llmling.names import unknown
from llmling.supervisor import conditions
from llmling.supervisor.router import Route
from llmling.supervisor.system import Supervisor

# A library stays quiet unless its user asks: `llmling.enable_logging("INFO")` or LLMLING_LOG_LEVEL=INFO
# (llmling/logs.py). Agent processes of a pool log at that level, or not at all.
logger.disable("llmling")
enable_from_environment()

TDeps = TypeVar("TDeps")
ConfigSource = str | os.PathLike[str] | SystemConfig | Mapping[str, Any]
Condition = Callable[[str], Any] | None

_standalone_ids = itertools.count(1)


def _as_import_path(function: Any, field: str) -> Any:
    """A function object given for `field` (a callback, a tool) as its `module:name` path; other values as
    they are. Agents import it in their own process, which never runs `__main__`: such a function is refused."""
    if not callable(function) or isinstance(function, str):
        return function
    module, name = getattr(function, "__module__", None), getattr(function, "__qualname__", "")
    if module == "__main__" or not module or "<" in name:
        raise ValueError(
            f"{field} {name or function!r} is defined in {module or 'no module'}, which agent processes never "
            f"import: move it into a module and pass it (or 'module:{name or 'function'}')"
        )
    return f"{module}:{name}"


def _load(config: ConfigSource) -> SystemConfig:
    if isinstance(config, SystemConfig):
        return config
    if isinstance(config, Mapping):
        data = dict(config)
        data.setdefault("name", "pool")
        return SystemConfig.model_validate(data)
    return load_config(config)


class AgentPool(Generic[TDeps]):
    """A system of agents from a config, started on `async with` and stopped on exit (also on errors).

    `parallel_load=False` starts the agents one after another. Every agent must start: one that fails makes
    `__aenter__` raise StartupError (after stopping the others). The control socket is private to this pool
    (`<name>-<pid>.sock` in the runtime directory unless `socket` is given), so `llmling status` can see it.
    """

    def __init__(
        self,
        config: ConfigSource,
        *,
        parallel_load: bool = True,
        socket: str | os.PathLike[str] | None = None,
        log_level: str | None = None,
    ) -> None:
        self.config = _load(config)
        self.parallel_load = parallel_load
        self._socket = socket or runtime_dir() / f"{self.config.name}-{os.getpid()}.sock"
        # The agents' level: given here, else the one of llmling.enable_logging(); None: they log nothing.
        self._log_level = log_level
        self._supervisor: Supervisor | None = None
        self._agents: dict[str, Agent[TDeps]] = {}

    async def __aenter__(self) -> AgentPool[TDeps]:
        supervisor = Supervisor(
            self.config,
            socket=self._socket,
            log_level=self._log_level or library_level(),
            require_all=True,
            parallel_load=self.parallel_load,
        )
        await supervisor.start()
        self._supervisor = supervisor
        self._agents = {name: Agent._bound(self, name) for name in self.config.agents}
        return self

    async def __aexit__(self, *exc: object) -> None:
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            await supervisor.stop(force=exc[0] is not None)

    @property
    def supervisor(self) -> Supervisor:
        if self._supervisor is None:
            raise RuntimeError("the pool is not running: use `async with AgentPool(...) as pool`")
        return self._supervisor

    @property
    def agents(self) -> dict[str, Agent[TDeps]]:
        return dict(self._agents)

    def get_agent(self, name: str) -> Agent[TDeps]:
        """The handle of agent `name`. Raises UnknownAgentError."""
        self.supervisor  # noqa: B018  (raises when not running)
        try:
            return self._agents[name]
        except KeyError:
            raise UnknownAgentError(unknown("agent", name, self._agents)) from None

    __getitem__ = get_agent


class Agent(Generic[TDeps]):
    """One agent. Standalone (`async with Agent(model=...) as agent`) or a handle from `pool.get_agent`.

    Standalone forms: `Agent("config.yml")` (a config with one agent, or `name=` to pick one),
    `Agent(model="openai/gpt-4o-mini", system_prompt=...)`, `Agent(callback="module:function")`.
    `parallel_init=False` initialises the agent's components one after another.
    """

    def __init__(
        self,
        config: str | os.PathLike[str] | None = None,
        *,
        name: str | None = None,
        parallel_init: bool = True,
        **agent_config: Any,
    ) -> None:
        self._pool: AgentPool[TDeps] | None = None
        self._own_pool: AgentPool[TDeps] | None = None
        self.name = name or "agent"
        if config is not None:
            system = load_config(config)
            if name is None:
                if len(system.agents) != 1:
                    raise ValueError(f"{config} has {len(system.agents)} agents; choose one with name=")
                self.name = next(iter(system.agents))
            elif name not in system.agents:
                raise UnknownAgentError(f"{config} has no agent {name!r}")
            agent = system.agents[self.name].model_copy(update={"parallel_init": parallel_init, "connections": []})
            base = system.source
        else:
            if "callback" in agent_config:
                agent_config["callback"] = _as_import_path(agent_config["callback"], "callback")
            if isinstance(agent_config.get("tools"), list):
                agent_config["tools"] = [_as_import_path(tool, "tool") for tool in agent_config["tools"]]
            agent = AgentConfig.model_validate({**agent_config, "parallel_init": parallel_init})
            base = None
        system_name = f"{self.name}-agent{next(_standalone_ids)}"
        self._standalone: SystemConfig | None = SystemConfig(
            name=system_name, agents={self.name: agent}, source=base
        )

    @classmethod
    def _bound(cls, pool: AgentPool[TDeps], name: str) -> Agent[TDeps]:
        agent = cls.__new__(cls)
        agent._pool = pool
        agent._own_pool = None
        agent.name = name
        agent._standalone = None
        return agent

    async def __aenter__(self) -> Agent[TDeps]:
        if self._standalone is not None and self._own_pool is None:
            pool: AgentPool[TDeps] = AgentPool(self._standalone)
            await pool.__aenter__()
            self._own_pool = self._pool = pool
        return self

    async def __aexit__(self, *exc: Any) -> None:
        pool, self._own_pool = self._own_pool, None
        if pool is not None:
            self._pool = None
            await pool.__aexit__(*exc)

    def __repr__(self) -> str:
        return f"Agent({self.name!r})"

    @property
    def _supervisor(self) -> Supervisor:
        if self._pool is None:
            raise RuntimeError(f"agent {self.name!r} is not running: use `async with`")
        return self._pool.supervisor

    # -- runs -----------------------------------------------------------------------------------------------
    async def run(self, prompt: str, *, wait_for_connections: bool | None = None) -> ChatMessage:
        """Run one turn and return the reply.

        `wait_for_connections=True` returns after the whole downstream tree this message started has
        finished (its results are in `.downstream`); False returns after this agent's reply while the
        downstream runs go on; None (default) waits when one of this agent's connections has
        `wait_for_completion`. Raises AgentRunError (the agent's name, the cause and its `kind`), never hangs on
        a crash; AgentBusyError (at once, the run not accepted) when `max_queue` runs already wait.
        """
        router = self._supervisor.router
        result, trace = await router.send(self.name, prompt)
        wait = router.waits_by_default(self.name) if wait_for_connections is None else wait_for_connections
        if not wait:
            return ChatMessage.from_result(result)
        await trace.done.wait()
        downstream = []
        for item in trace.results:
            if "error" in item:
                raise AgentRunError.from_reply(item["agent"], item)
            downstream.append(ChatMessage.from_result(item))
        return ChatMessage.from_result(result, tuple(downstream))

    async def complete_tasks(self) -> None:
        """Wait for the downstream runs pending on this agent (those no caller waited for)."""
        await self._supervisor.router.complete_tasks(self.name)

    # -- background runs (the supervisor's timer; see llmling.supervisor.background) --------------------------
    async def run_in_background(self, prompt: str, *, interval: float = 1.0, max_count: int | None = None) -> None:
        """Run `prompt` now and then every `interval` seconds (at most `max_count` runs), until `stop()`.

        Replaces this agent's current background runs. A tick that comes while the previous run is still in
        flight is skipped (no pile-up). Raises ValueError for a bad interval or count.
        """
        self._supervisor.background.start_job(self.name, prompt, interval, max_count)

    async def stop(self) -> None:
        """Stop this agent's background runs (a run in flight still finishes). No-op when there are none."""
        self._supervisor.background.stop_job(self.name)

    # -- connections ----------------------------------------------------------------------------------------
    def connect_to(
        self,
        other: Agent[Any] | Iterable[Agent[Any]],
        *,
        wait_for_completion: bool = False,
        filter: Condition = None,
        transform: Callable[[str], Any] | None = None,
        stop_condition: Condition = None,
    ) -> Connection:
        """Route this agent's replies to `other` (one agent or several). Returns a disconnectable Connection."""
        targets = [other] if isinstance(other, Agent) else list(other)
        supervisor = self._supervisor
        routes = []
        for target in targets:
            if target._pool is not self._pool:
                raise ValueError(f"{self.name} >> {target.name}: agents must belong to the same pool")
            routes.append(
                supervisor.router.connect(
                    Route(
                        source=self.name,
                        target=target.name,
                        wait_for_completion=wait_for_completion,
                        filter=conditions.predicate(filter, str(supervisor.config.base_dir)),
                        transform=conditions.transform(transform, str(supervisor.config.base_dir)),
                        stop_condition=conditions.predicate(stop_condition, str(supervisor.config.base_dir)),
                    )
                )
            )
        return Connection(supervisor, routes, targets)

    def __rshift__(self, other: Agent[Any] | Iterable[Agent[Any]]) -> Connection:
        return self.connect_to(other)

    def __rrshift__(self, sources: Iterable[Agent[Any]]) -> Connection:
        """`[a, b] >> c`: fan-in."""
        connections = [source.connect_to(self) for source in sources]
        return Connection(self._supervisor, [r for c in connections for r in c.routes], [self])

    @property
    def connections(self) -> list[ConnectionConfig]:
        """This agent's active routes, as config entries (callables shown only by their presence)."""
        return [
            ConnectionConfig(name=route.target, wait_for_completion=route.wait_for_completion)
            for route in self._supervisor.router.routes(self.name)
        ]


class Connection:
    """The routes made by one `>>`. `disconnect()` removes them; `conn >> c` connects its targets on to c."""

    def __init__(self, supervisor: Supervisor, routes: list[Route], targets: list[Agent[Any]]) -> None:
        self._supervisor = supervisor
        self.routes = routes
        self.targets = targets

    @property
    def active(self) -> bool:
        return any(route.active for route in self.routes)

    def disconnect(self) -> None:
        for route in self.routes:
            self._supervisor.router.disconnect(route)

    def __rshift__(self, other: Agent[Any] | Iterable[Agent[Any]]) -> Connection:
        """`a >> b >> c`: connects this connection's targets on; the result holds every link of the chain, so
        its `disconnect()` removes them all."""
        connections = [target.connect_to(other) for target in self.targets]
        return Connection(
            self._supervisor,
            [*self.routes, *(r for c in connections for r in c.routes)],
            [t for c in connections for t in c.targets],
        )

    def __repr__(self) -> str:
        pairs = ", ".join(f"{route.source} >> {route.target}" for route in self.routes)
        return f"Connection({pairs}, active={self.active})"


__all__ = ["Agent", "AgentPool", "Connection"]
