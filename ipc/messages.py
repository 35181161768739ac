"""The typed frames of the IPC protocol, shared by both ends (supervisor, agent processes, clients).

On the wire every frame is a JSON object (`ipc/frames.py`) with a type `t`; requests carry `id`, replies carry
`re` (the id of the request they answer). These TypedDicts name each frame's fields; they cost nothing at run
time (a TypedDict is a plain dict), so the light CLI may import this module too. A frame that arrives is a
plain dict until its receiver has checked `t`; then it may be treated as the frame type `t` names.

The table of frames, who sends them and what answers them is in docs/ARCHITECTURE.md ("The IPC protocol").
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

# Why a run failed (the `kind` of an `error` frame answering a `run`, and of `llmling.errors.AgentRunError`):
# "error" the agent's own code raised, "crash" its process died during the run, "timeout" the run exceeded
# its `run_timeout`, "unavailable" the agent is failed/stopped/removed, "busy" its queue is full.
ErrorKind = Literal["error", "crash", "timeout", "unavailable", "busy"]
ComponentState = Literal["starting", "ready", "failed"]


# -- agent process → supervisor --------------------------------------------------------------------------------
class HelloFrame(TypedDict):
    """The first frame of an agent's connection; answered by `ok`, or by `error` and the connection closing."""

    t: Literal["hello"]
    id: str
    role: Literal["agent"]
    agent: str
    # The per-spawn secret the supervisor handed the process (never logged).
    token: str


class ComponentFrame(TypedDict):
    """One init component (`backend`, `tools`, `mcp:<server>`, `knowledge:<source>`) changed state."""

    t: Literal["component"]
    component: str
    state: ComponentState


class ReadyFrame(TypedDict):
    """Every component is ready: the agent serves runs from now on."""

    t: Literal["ready"]
    pid: int


class FailedFrame(TypedDict):
    """The init failed (the first failed component, named); the process then exits."""

    t: Literal["failed"]
    error: str


class ChunkFrame(TypedDict):
    """A piece of a streamed reply; keeps its request open."""

    t: Literal["chunk"]
    re: str
    text: str


class ResultFrame(TypedDict):
    """A run's reply: its content, `usage` (`prompt_tokens`, `completion_tokens`, `total_tokens`, `cost`,
    [`tool_calls`]) and the seconds the agent spent on it."""

    t: Literal["result"]
    re: str
    content: str
    usage: dict[str, Any]
    elapsed: float


class ErrorCause(TypedDict, total=False):
    """What a model error was (`type`: the typed model error's name), when the agent knows."""

    type: str
    message: str


class ErrorFrame(TypedDict):
    """A request failed. Answering a `run`, it carries `kind`; a model failure may add `cause`."""

    t: Literal["error"]
    re: NotRequired[str]
    error: str
    kind: NotRequired[ErrorKind]
    cause: NotRequired[ErrorCause]
    # To a client: the agent whose run failed.
    agent: NotRequired[str]


class PongFrame(TypedDict):
    t: Literal["pong"]
    re: str


# -- supervisor → agent process --------------------------------------------------------------------------------
class OkFrame(TypedDict):
    """A request succeeded (the `hello` of an agent; some client requests add fields)."""

    t: Literal["ok"]
    re: str


class RunFrame(TypedDict):
    """One run of the agent: answered by `chunk`* (when `stream`), then `result` or `error`."""

    t: Literal["run"]
    # The run's id; a redelivered run keeps it and has `attempt` + 1.
    id: str
    prompt: str
    trace_id: str
    parent_id: str | None
    hops: int
    stream: bool
    # 1-based: the first delivery of this run is attempt 1.
    attempt: int
    # Seconds the agent gives the run from the moment it starts it (its `run_timeout`); None: no limit.
    timeout: float | None


class PingFrame(TypedDict):
    """The heartbeat: answered by `pong` from the agent's event loop, however busy its runs are."""

    t: Literal["ping"]
    id: str


class ShutdownFrame(TypedDict):
    """Finish: the agent process stops serving and exits."""

    t: Literal["shutdown"]


# -- clients → supervisor (the control socket) -----------------------------------------------------------------
class SendRequest(TypedDict):
    t: Literal["send"]
    id: str
    agent: str
    prompt: str
    stream: NotRequired[bool]
    # Reply when the whole tree of runs this message started has finished (with `downstream`).
    wait: NotRequired[bool]


class SendResult(TypedDict):
    """The answer to `send`: the run's result, and with `wait` every downstream result or error."""

    t: Literal["result"]
    re: str
    agent: str
    content: str
    id: str
    trace_id: str
    parent_id: str | None
    usage: dict[str, Any]
    elapsed: float
    downstream: NotRequired[list[dict[str, Any]]]


class StatusRequest(TypedDict):
    t: Literal["status"]
    id: str


class ProcessStatus(TypedDict):
    """One process of an agent in `status` (a local replica, or one on another host)."""

    host: str  # socket.gethostname() of the machine the process runs on
    pid: int | None
    state: str
    restarts: int
    running: int
    queued: int
    error: str | None


class AgentStatus(TypedDict):
    name: str
    pid: int | None  # its first process
    state: str
    restarts: int
    error: str | None
    replicas: NotRequired[int]
    placement: NotRequired[str]
    processes: NotRequired[list[ProcessStatus]]


class StatusAnswer(TypedDict):
    t: Literal["status"]
    re: str
    name: str
    pid: int
    socket: str
    agents: list[AgentStatus]
    models: list[dict[str, Any]]
    totals: NotRequired[dict[str, dict[str, Any]]]


class StopRequest(TypedDict):
    t: Literal["stop"]
    id: str


class HistoryRequest(TypedDict):
    t: Literal["history"]
    id: str
    agent: str
    # Default 20; 0 = all; at most 1000.
    limit: NotRequired[int]


class SubscribeRequest(TypedDict):
    """Answered by `chunk` frames carrying `event` until the client disconnects."""

    t: Literal["subscribe"]
    id: str
    agents: NotRequired[list[str]]


class EventChunk(TypedDict):
    t: Literal["chunk"]
    re: str
    event: dict[str, Any]


class TriggerRequest(TypedDict):
    t: Literal["trigger"]
    id: str
    agent: str
    name: str
    enabled: bool


class BackgroundStartRequest(TypedDict):
    t: Literal["background_start"]
    id: str
    agent: str
    prompt: str
    interval: float
    max_count: NotRequired[int | None]


class BackgroundStopRequest(TypedDict):
    t: Literal["background_stop"]
    id: str
    agent: str


# -- over NATS (agent hosts ↔ supervisor; docs/ARCHITECTURE.md "Across hosts"; `ProcessStatus` above) ------------
class RemoteReply(TypedDict):
    """A host's answer to a run it took from JetStream, published to `Subjects.result`."""

    # The run's id and the attempt the host ran (the frame's `attempt` + its deliveries - 1).
    id: str
    attempt: int
    # The host's name and the pid of the agent process that ran it (None: it never reached one).
    host: str
    pid: int | None
    reply: ResultFrame | ErrorFrame


class HostReport(TypedDict):
    """A host's periodic report (core NATS, `Subjects.hosts`, every `host_heartbeat` s)."""

    host: str
    # A uuid per `llmling host` process (two hosts may share a hostname).
    host_id: str
    pid: int
    # Per agent this host serves: its processes.
    agents: dict[str, list[ProcessStatus]]
    # True in the last report of a host that is stopping.
    leaving: bool


# What an agent process may send its supervisor, and what it may receive.
AgentToSupervisor = (
    HelloFrame | ComponentFrame | ReadyFrame | FailedFrame | ChunkFrame | ResultFrame | ErrorFrame | PongFrame
)
SupervisorToAgent = OkFrame | ErrorFrame | RunFrame | PingFrame | ShutdownFrame
# The reply that completes a run (chunks come before it).
RunReply = ResultFrame | ErrorFrame

__all__ = [
    "AgentStatus",
    "AgentToSupervisor",
    "BackgroundStartRequest",
    "BackgroundStopRequest",
    "ChunkFrame",
    "ComponentFrame",
    "ComponentState",
    "ErrorCause",
    "ErrorFrame",
    "ErrorKind",
    "EventChunk",
    "FailedFrame",
    "HelloFrame",
    "HistoryRequest",
    "HostReport",
    "OkFrame",
    "PingFrame",
    "PongFrame",
    "ProcessStatus",
    "ReadyFrame",
    "RemoteReply",
    "ResultFrame",
    "RunFrame",
    "RunReply",
    "SendRequest",
    "SendResult",
    "ShutdownFrame",
    "StatusAnswer",
    "StatusRequest",
    "StopRequest",
    "SubscribeRequest",
    "SupervisorToAgent",
    "TriggerRequest",
]
