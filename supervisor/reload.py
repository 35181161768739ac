"""Apply a changed config to a running system: `llmling reload`, SIGHUP, `up --reload`.

The config file is read and validated first; an invalid one changes nothing and the error says why. Then the
difference is planned (`plan_reload`, pure) and applied (`Reloader.apply`):

- agents added to the config start; agents removed stop accepting runs, drain, and stop;
- agents whose own settings changed (model, callback, tools, …: anything but `connections`, `triggers` and
  `background`) restart gracefully: their runs in flight finish, runs waiting for them keep waiting, then a
  fresh process starts from the new config;
- agents whose only change is `replicas` get processes added, or lose their last ones (after their runs in
  flight); their other processes keep running;
- routes made from the config are replaced (routes made in Python stay);
- a trigger kind whose triggers changed restarts its service; triggers that did not change keep their
  counters and their enabled state;
- background jobs from the config start, are replaced or stop where their config changed;
- unchanged agents keep their processes and their queued work.

Keys that shape the system itself (`name`, `state_dir`, `durability`, `transport`) cannot change while it
runs: a config that changes them is refused, naming the key. Other top-level settings take effect for what
starts after the reload (`max_hops` at once).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loguru import logger

from llmling.config import SystemConfig, load_config
from llmling.errors import LLMlingError

if TYPE_CHECKING:
    from llmling.config import AgentConfig
    from llmling.supervisor.system import Supervisor

Message = dict[str, Any]
# Top-level keys a running system cannot take on; changing them needs a stop and a start.
FIXED_KEYS = ("name", "state_dir", "durability", "transport")
# Per-agent keys applied in place (by routes, triggers, background jobs) without restarting the agent.
IN_PLACE_KEYS = frozenset({"connections", "triggers", "background"})


class ReloadError(LLMlingError):
    """The new config cannot be applied (invalid, or it changes a key that needs a restart)."""


@dataclass(frozen=True)
class ReloadPlan:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    # Agents whose only change is their `replicas` count (processes are added or removed, the others stay).
    resized: tuple[str, ...] = ()
    # Agents whose `connections` changed (their config routes are replaced).
    routes: tuple[str, ...] = ()
    # Trigger kinds whose set of triggers changed (their service restarts).
    trigger_kinds: tuple[str, ...] = ()
    # Agents whose `background` job changed.
    background: tuple[str, ...] = ()
    # Top-level settings that changed (other than `agents`).
    settings: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not any(
            (
                self.added,
                self.removed,
                self.changed,
                self.resized,
                self.routes,
                self.trigger_kinds,
                self.background,
                self.settings,
            )
        )

    def info(self) -> Message:
        return {
            "added": list(self.added),
            "removed": list(self.removed),
            "changed": list(self.changed),
            "resized": list(self.resized),
            "routes": list(self.routes),
            "triggers": list(self.trigger_kinds),
            "background": list(self.background),
            "settings": list(self.settings),
        }

    def summary(self) -> str:
        if self.empty:
            return "no changes"
        parts = [
            f"{label} {', '.join(names)}"
            for label, names in (
                ("added", self.added),
                ("removed", self.removed),
                ("restarted", self.changed),
                ("replicas of", self.resized),
                ("routes of", self.routes),
                ("triggers:", self.trigger_kinds),
                ("background of", self.background),
                ("settings:", self.settings),
            )
            if names
        ]
        return "; ".join(parts)


def _own_settings(agent: AgentConfig, exclude: frozenset[str] = IN_PLACE_KEYS) -> Message:
    return agent.model_dump(exclude=set(exclude))


def _triggers_by_kind(config: SystemConfig) -> dict[str, list[tuple[str, Message]]]:
    kinds: dict[str, list[tuple[str, Message]]] = {}
    for name, agent in config.agents.items():
        for trigger in agent.triggers:
            kinds.setdefault(trigger.type, []).append((name, trigger.model_dump()))
    return kinds


def plan_reload(old: SystemConfig, new: SystemConfig) -> ReloadPlan:
    """What applying `new` over `old` changes. Raises ReloadError for a key that needs a restart."""
    old_top = old.model_dump(exclude={"agents"})
    new_top = new.model_dump(exclude={"agents"})
    for key in FIXED_KEYS:
        if old_top.get(key) != new_top.get(key):
            raise ReloadError(
                f"{key!r} changed ({old_top.get(key)!r} → {new_top.get(key)!r}): stop and start "
                "the system to apply it; nothing was changed"
            )
    settings = tuple(sorted(key for key in new_top if old_top.get(key) != new_top[key]))
    both = [name for name in new.agents if name in old.agents]
    differ = [n for n in both if _own_settings(old.agents[n]) != _own_settings(new.agents[n])]
    count_only = IN_PLACE_KEYS | {"replicas"}
    resized = [
        n for n in differ if _own_settings(old.agents[n], count_only) == _own_settings(new.agents[n], count_only)
    ]
    old_kinds, new_kinds = _triggers_by_kind(old), _triggers_by_kind(new)
    return ReloadPlan(
        added=tuple(name for name in new.agents if name not in old.agents),
        removed=tuple(name for name in old.agents if name not in new.agents),
        changed=tuple(n for n in differ if n not in resized),
        resized=tuple(resized),
        routes=tuple(
            sorted(
                name
                for name in set(old.agents) | set(new.agents)
                if (old.agents[name].connections if name in old.agents else [])
                != (new.agents[name].connections if name in new.agents else [])
            )
        ),
        trigger_kinds=tuple(
            sorted(kind for kind in set(old_kinds) | set(new_kinds) if old_kinds.get(kind) != new_kinds.get(kind))
        ),
        background=tuple(
            sorted(
                name
                for name in set(old.agents) | set(new.agents)
                if (old.agents[name].background if name in old.agents else None)
                != (new.agents[name].background if name in new.agents else None)
            )
        ),
        settings=settings,
    )


class Reloader:
    """Re-reads the system's config file and applies it; one reload at a time."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor
        self._lock = asyncio.Lock()
        self.log = logger.bind(agent="supervisor")
        self.count = 0

    def load(self) -> SystemConfig:
        """The config file as it is now. Raises ReloadError (with the config error's file:line)."""
        source = self._supervisor.config.source
        if source is None:
            raise ReloadError("this system was not started from a config file; there is nothing to reload")
        try:
            return load_config(source)
        except LLMlingError as exc:
            raise ReloadError(f"{exc}; nothing was changed") from None

    async def reload(self, config: SystemConfig | None = None) -> ReloadPlan:
        """Load (unless given), check and apply the config. Raises ReloadError; then nothing changed."""
        async with self._lock:
            supervisor = self._supervisor
            if supervisor.stopping:
                raise ReloadError("the system is shutting down")
            new = config if config is not None else self.load()
            if new.source is None:
                new.source = supervisor.config.source
            plan = plan_reload(supervisor.config, new)
            if plan.empty:
                self.log.info("reload: no changes")
                return plan
            supervisor.emit({"event": "reloading", "name": new.name, **plan.info()})
            await supervisor.apply_config(new, plan)
            self.count += 1
            self.log.info("reload applied: {}", plan.summary())
            supervisor.emit({"event": "reloaded", "name": new.name, "summary": plan.summary(), **plan.info()})
            return plan


__all__ = ["FIXED_KEYS", "ReloadError", "ReloadPlan", "Reloader", "plan_reload"]
