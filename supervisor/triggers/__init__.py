"""Triggers: file changes, HTTP requests and the clock start runs of agents. The supervisor owns them all.

Each trigger kind maps by name to the Service that implements it (imported only when a config uses it, so
a system without webhooks never imports aiohttp). `Triggers` builds one service per kind in use, registers
them with the supervisor, and answers the `trigger` (enable/disable) and `triggers` (list) requests.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Protocol

from llmling.ipc.peer import Peer
from llmling.supervisor.control import field
from llmling.supervisor.triggers.base import TriggerHost, TriggerState, UnknownTriggerError

if TYPE_CHECKING:
    from llmling.config import SystemConfig
    from llmling.supervisor.system import Supervisor

Message = dict[str, Any]

# Trigger kind → "module:class" of its service, a class called with (host, [TriggerState]).
TRIGGER_KINDS: dict[str, str] = {
    "file": "llmling.supervisor.triggers.file:FileTriggers",
    "webhook": "llmling.supervisor.triggers.webhook:WebhookTriggers",
    "time": "llmling.supervisor.triggers.time:TimeTriggers",
}


class TriggerService(Protocol):
    name: str

    def __init__(self, host: TriggerHost, triggers: list[TriggerState]) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def load_kind(kind: str) -> type[TriggerService]:
    module_name, _, attr = TRIGGER_KINDS[kind].partition(":")
    return getattr(importlib.import_module(module_name), attr)  # type: ignore[no-any-return]


class Triggers:
    """Every configured trigger of a system, by (agent, name), and one service per kind in use."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor
        self.host = TriggerHost(supervisor)
        self.states: dict[tuple[str, str], TriggerState] = {}
        # Invariant: one service per kind that has triggers; each is also in the supervisor's services.
        self.services: dict[str, TriggerService] = {}
        for kind, states in self._states_by_kind(supervisor.config, set(TRIGGER_KINDS)).items():
            self.services[kind] = service = load_kind(kind)(self.host, states)
            supervisor.services.append(service)
        supervisor.control.register("trigger", self._on_trigger)
        supervisor.control.register("triggers", self._on_list)

    def _states_by_kind(self, config: SystemConfig, kinds: set[str]) -> dict[str, list[TriggerState]]:
        """A state per trigger of `kinds` in `config`, registered; one whose config is unchanged is kept
        (with its counters and enabled state)."""
        by_kind: dict[str, list[TriggerState]] = {}
        for agent_name, agent in config.agents.items():
            for trigger in agent.triggers:
                if trigger.type not in kinds:
                    continue
                state = self.states.get((agent_name, trigger.name))
                if state is None or state.config != trigger:
                    state = TriggerState(agent_name, trigger)
                self.states[(agent_name, trigger.name)] = state
                by_kind.setdefault(trigger.type, []).append(state)
        return by_kind

    # -- reload ---------------------------------------------------------------------------------------------
    async def stop_kinds(self, kinds: tuple[str, ...]) -> None:
        """Stop the services of `kinds` (a reload changed their triggers); their runs in flight go on."""
        for kind in kinds:
            service = self.services.pop(kind, None)
            if service is not None:
                self._supervisor.services.remove(service)
                await service.stop()

    async def start_kinds(self, config: SystemConfig, kinds: tuple[str, ...]) -> None:
        """Start the services of `kinds` from `config` (after `stop_kinds`)."""
        kept = {key: state for key, state in self.states.items() if state.kind not in kinds}
        by_kind = self._states_by_kind(config, set(kinds))
        self.states = {**kept, **{(s.agent, s.name): s for states in by_kind.values() for s in states}}
        for kind, states in by_kind.items():
            self.services[kind] = service = load_kind(kind)(self.host, states)
            self._supervisor.services.append(service)
            await service.start()

    def get(self, agent: str, name: str) -> TriggerState:
        """Raises UnknownAgentError or UnknownTriggerError."""
        self.host.router.slot(agent)
        state = self.states.get((agent, name))
        if state is None:
            names = ", ".join(n for a, n in self.states if a == agent) or "none"
            raise UnknownTriggerError(f"agent {agent!r} has no trigger {name!r} (its triggers: {names})")
        return state

    def set_enabled(self, agent: str, name: str, enabled: bool) -> TriggerState:
        state = self.get(agent, name)
        if state.enabled != enabled:
            state.enabled = enabled
            self.host.log.info("trigger {} {}", state.label, "enabled" if enabled else "disabled")
            self.host.emit(
                {"event": "trigger_state", "agent": agent, "trigger": name, "kind": state.kind, "enabled": enabled}
            )
        return state

    def info(self) -> list[Message]:
        return [state.info() for state in self.states.values()]

    # -- control requests -----------------------------------------------------------------------------------
    def _on_trigger(self, peer: Peer, message: Message) -> None:
        state = self.set_enabled(
            field(message, "agent", str), field(message, "name", str), field(message, "enabled", bool)
        )
        peer.reply(message, {"t": "ok", "trigger": state.info()})

    def _on_list(self, peer: Peer, message: Message) -> None:
        peer.reply(message, {"t": "ok", "triggers": self.info()})


__all__ = ["TRIGGER_KINDS", "TriggerHost", "TriggerState", "Triggers", "UnknownTriggerError", "load_kind"]
