"""`AgentReplicas`: one agent as N local processes (`replicas: N`), each an `AgentSlot`; runs spread over them.

An `AgentRunner` (runner.py), so the router sees one agent whatever the number of its processes:

- Admission is the agent's: `admit()`/`check_capacity()` count the runs waiting anywhere (here for a place, or
  in a replica) against the agent's `max_queue`: accepted runs beyond N times `concurrency`.
- `submit()` sends a run to the replica with a free place (fewer than `concurrency` runs in it) and the least
  load, READY ones first (ties go round the replicas). With no free place the run waits here, in order, until a
  run ends or a replica becomes READY. Replicas still starting take runs only while none is READY: a run then
  waits in that replica for its READY, as with one process.
- A replica that dies mid-run fails its runs with kind "crash"; the router redelivers them with the same id,
  and the next `submit()` picks a READY replica (the dead one is restarting).
- `state` is "ready" while at least one replica is READY (then "starting", "restarting", "failed", "stopped",
  the first that any replica is in); `started` resolves once every replica's first start has an outcome.
- With one replica a run goes straight to its slot (no waiting here, nothing per run beyond two counters).

Each replica has its own token: `authenticate()` binds an agent's hello to the replica whose token it presents.
Replica i's logs and events are labelled `name#i` / carry `"replica": i` when the agent has more than one.
"""

from __future__ import annotations

import asyncio
import collections
import math
import socket
from collections.abc import Callable

from llmling.agent_proc.spec import AgentSpec
from llmling.errors import AgentBusyError, AgentRunError
from llmling.ipc.messages import ProcessStatus, ResultFrame, RunFrame
from llmling.ipc.peer import OnChunk, Peer
from llmling.supervisor.slot import AgentSlot, AgentUnavailable, Message, OnEvent, SlotPolicy
from llmling.supervisor.spawner import Spawner

# The order in which an agent's state is the first state any of its replicas is in.
STATE_ORDER = ("ready", "starting", "restarting", "failed")


class AgentReplicas:
    """N `AgentSlot`s of one agent behind one `AgentRunner`. `run()` owns the replicas' tasks (a TaskGroup)."""

    def __init__(
        self,
        name: str,
        make_spec: Callable[[str], AgentSpec],
        spawner: Spawner,
        on_event: OnEvent,
        policy: SlotPolicy | None = None,
        replicas: int = 1,
    ) -> None:
        self.name = name
        self.policy = policy or SlotPolicy()
        self.placement = "local"
        self.host = socket.gethostname()
        self._make_spec = make_spec
        self._spawner = spawner
        self._on_event = on_event
        # Invariant: the replicas that take runs, numbered 1..N in this order (None when N is 1).
        self.replicas: list[AgentSlot] = []
        # Invariant: runs admitted by `admit()` that have not entered `submit` nor been released.
        self.admitted = 0
        # Invariant: runs inside `submit` waiting here for a free place in a replica.
        self.waiting = 0
        # Invariant: runs inside a replica's `submit` (waiting there for READY, or running).
        self._inside = 0
        # The runs waiting here for a place, in arrival order; each stays in line until it has one. An event
        # is set to wake its run (a place freed, or a replica's state changed).
        self._waiters: collections.deque[asyncio.Event] = collections.deque()
        # Where the round of equally loaded replicas starts next.
        self._cursor = 0
        self._stopping = False
        # The TaskGroup of `run()` (owns every replica's task) while it runs.
        self._group: asyncio.TaskGroup | None = None
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._add(replicas)

    # -- replicas -------------------------------------------------------------------------------------------
    def _add(self, count: int) -> list[AgentSlot]:
        added = [self._new_replica() for _ in range(count)]
        self.replicas.extend(added)
        self._renumber()
        if self._group is not None:
            for slot in added:
                self._group.create_task(slot.run(), name=f"slot-{slot.label}")
        return added

    def _new_replica(self) -> AgentSlot:
        def on_event(event: Message) -> None:
            if event.get("event") == "agent_state":
                self._wake_all()
                if slot.replica is not None:
                    # The agent's state, and which process changed to what.
                    event = {**event, "state": self.state, "replica": slot.replica, "process_state": slot.state}
            self._on_event(event)

        slot = AgentSlot(self.name, self._make_spec, self._spawner, on_event, self.policy)
        return slot

    def _renumber(self) -> None:
        single = len(self.replicas) == 1
        for index, slot in enumerate(self.replicas, 1):
            slot.number(None if single else index)

    async def resize(self, count: int, grace: float) -> None:
        """Run `count` replicas: new ones start (returns once their start has an outcome); the last ones beyond
        `count` take no new runs, get `grace` seconds to finish theirs, and stop."""
        if count > len(self.replicas):
            added = self._add(count - len(self.replicas))
            await asyncio.gather(*(slot.started for slot in added))
        elif count < len(self.replicas):
            removed = self.replicas[count:]
            del self.replicas[count:]
            self._renumber()
            self._wake_all()
            await asyncio.gather(*(slot.drain(grace) for slot in removed))
            await asyncio.gather(*(slot.stop(grace) for slot in removed))

    def authenticate(self, peer: Peer, token: str) -> bool:
        """Bind `peer` to the replica whose current process presents `token`."""
        return any(slot.authenticate(peer, token) for slot in self.replicas)

    # -- state ----------------------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        states = {slot.state for slot in self.replicas}
        return next((state for state in STATE_ORDER if state in states), "stopped")

    @property
    def last_error(self) -> str | None:
        """The error of the first failed replica (else of the first one with an error), naming the replica."""
        ranked = sorted(self.replicas, key=lambda slot: slot.state != "failed")
        slot = next((slot for slot in ranked if slot.last_error), None)
        if slot is None:
            return None
        return slot.last_error if slot.replica is None else f"{slot.label}: {slot.last_error}"

    @property
    def gave_up(self) -> bool:
        return all(slot.gave_up for slot in self.replicas)

    @property
    def pid(self) -> int | None:
        """The first process's pid."""
        return self.replicas[0].pid

    @property
    def restarts(self) -> int:
        return sum(slot.restarts for slot in self.replicas)

    @property
    def queued(self) -> int:
        """Runs accepted and not started: waiting here for a place or in a replica."""
        return self.waiting + sum(slot.queued for slot in self.replicas)

    @property
    def running(self) -> int:
        return sum(slot.running for slot in self.replicas)

    @property
    def places(self) -> int:
        """Runs the agent's processes take at once: `concurrency` per process."""
        return self.policy.concurrency * len(self.replicas)

    @property
    def free_places(self) -> int:
        """Runs that would start at once: free places of the READY replicas, less the runs waiting here (a
        host serving runs from a shared queue fetches this many)."""
        free = sum(
            max(0, slot.policy.concurrency - slot.queued - slot.running)
            for slot in self.replicas
            if slot.takes_runs
        )
        return max(0, free - self.waiting)

    @property
    def takes_runs(self) -> bool:
        """True while at least one replica's READY process takes new runs."""
        return any(slot.takes_runs for slot in self.replicas)

    def processes(self) -> list[ProcessStatus]:
        return [
            {
                "host": self.host,
                "pid": slot.pid,
                "state": slot.state,
                "restarts": slot.restarts,
                "running": slot.running,
                "queued": slot.queued,
                "error": slot.last_error,
            }
            for slot in self.replicas
        ]

    def status(self) -> Message:
        processes = self.processes()
        return {
            "name": self.name,
            "pid": processes[0]["pid"] if processes else None,
            "state": self.state,
            "restarts": sum(process["restarts"] for process in processes),
            "error": self.last_error,
            "gave_up": self.gave_up,
            "queued": self.waiting + sum(process["queued"] for process in processes),
            "running": sum(process["running"] for process in processes),
            "concurrency": self.policy.concurrency,
            "max_queue": self.policy.max_queue,
            "replicas": len(processes),
            "placement": self.placement,
            "processes": processes,
        }

    # -- admission ------------------------------------------------------------------------------------------
    def check_capacity(self) -> None:
        """Raise AgentBusyError when `max_queue` runs of the agent already wait; counts nothing."""
        waiting = max(0, self.waiting + self.admitted + self._inside - self.places)
        if waiting >= self.policy.max_queue:
            retry_after = min(slot.retry_after() for slot in self.replicas)
            raise AgentBusyError(self.name, waiting, max(1, math.ceil(retry_after / len(self.replicas))))

    def admit(self) -> None:
        """Count one more accepted run until it enters `submit(admitted=True)` or is `release()`d."""
        self.check_capacity()
        self.admitted += 1

    def release(self) -> None:
        self.admitted -= 1

    # -- runs -----------------------------------------------------------------------------------------------
    async def submit(
        self, message: RunFrame, on_chunk: OnChunk | None, wait_ready: float = 60.0, admitted: bool = False
    ) -> ResultFrame:
        """Run `message` in one replica (see the module's doc for which); return its final reply.

        Never refuses for a full queue. Raises AgentRunError with the replica's kind ("crash", "timeout",
        "unavailable", "error")."""
        if admitted:
            self.admitted -= 1
        if len(self.replicas) == 1 and not self._waiters:
            slot = self.replicas[0]
        else:
            self.waiting += 1
            try:
                slot = await self._place()
            finally:
                self.waiting -= 1
        self._inside += 1
        try:
            return await slot.submit(message, on_chunk, wait_ready)
        finally:
            self._inside -= 1
            if self._waiters:
                self._wake_one()

    async def _place(self) -> AgentSlot:
        """The replica for the next run, once one has a free place (first come, first served)."""
        if not self._waiters:
            slot = self._choose()
            if slot is not None:
                return slot
        turn = asyncio.Event()
        self._waiters.append(turn)
        chosen = False
        try:
            while True:
                await turn.wait()
                turn.clear()
                slot = self._choose()
                if slot is not None:
                    chosen = True
                    return slot
        finally:
            self._waiters.remove(turn)
            if turn.is_set() and not chosen:
                self._wake_one()  # woken for a place it does not take (cancelled): the next run's

    def _choose(self) -> AgentSlot | None:
        """A replica with a free place, READY first and least loaded; None: wait. Raises AgentRunError
        ("unavailable") when no replica takes runs at all (stopping, failed, given up)."""
        if self._stopping:
            raise AgentRunError(self.name, "agent is stopped", kind="unavailable")
        replicas = self.replicas
        count = len(replicas)
        best: AgentSlot | None = None
        best_rank = (False, 0)
        best_index = 0
        usable = any_ready = False
        for step in range(count):
            index = (self._cursor + step) % count
            slot = replicas[index]
            if not slot.available:
                continue
            usable = True
            ready = slot.takes_runs
            any_ready = any_ready or ready
            load = slot.queued + slot.running
            if load >= slot.policy.concurrency:
                continue
            rank = (ready, -load)
            if best is None or rank > best_rank:
                best, best_rank, best_index = slot, rank, index
        if not usable:
            raise AgentRunError(self.name, f"agent failed: {self.last_error}", kind="unavailable")
        if best is None or (any_ready and not best_rank[0]):
            return None  # every place is taken, or only a starting replica has one while others are READY
        self._cursor = (best_index + 1) % count
        return best

    def _wake_one(self) -> None:
        for turn in self._waiters:
            if not turn.is_set():
                turn.set()
                return

    def _wake_all(self) -> None:
        for turn in self._waiters:
            turn.set()

    # -- life -----------------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Run every replica's task (and those `resize` adds) until all have stopped."""
        async with asyncio.TaskGroup() as group:
            self._group = group
            for slot in self.replicas:
                group.create_task(slot.run(), name=f"slot-{slot.label}")
            group.create_task(self._first_starts())
        self._group = None

    async def _first_starts(self) -> None:
        await asyncio.gather(*(slot.started for slot in list(self.replicas)))
        if not self.started.done():
            self.started.set_result(None)

    async def restart(self, grace: float) -> None:
        """Restart every replica (see `AgentSlot.restart`); returns once each has an outcome."""
        if self._stopping:
            raise AgentUnavailable(f"agent {self.name!r} is stopped")
        await asyncio.gather(*(slot.restart(grace) for slot in self.replicas))

    async def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` until no run is in flight in any replica; True when none is."""
        drained = await asyncio.gather(*(slot.drain(timeout) for slot in self.replicas))
        return all(drained)

    async def stop(self, grace: float) -> None:
        self._stopping = True
        self._wake_all()
        await asyncio.gather(*(slot.stop(grace) for slot in self.replicas))
        if not self.started.done():
            self.started.set_result(None)


__all__ = ["AgentReplicas"]
