"""The host side of the NATS transport: serve one agent's JetStream consumer with a local `AgentRunner`.

`serve_agent` fetches one run per free place of the runner (its concurrency x replicas), runs it, publishes the
`RemoteReply` to the system's `result` subject (JetStream, deduplicated by `result:<id>:<attempt>`) and only
then acks the run. While a run runs, a progress ack every `ack_wait / 3` keeps it ours. A run whose process
died or could not start (kind "crash"/"unavailable") is nak'ed: JetStream redelivers it, maybe to another
replica or host, until the consumer's `max_deliver`. Stream chunks go out on core NATS to `chunk(<run id>)`.
One failing message never ends the loop. Cancelled, it stops fetching; runs in flight get `grace` seconds,
the rest are nak'ed (redelivered at once rather than after `ack_wait`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import TYPE_CHECKING, Any, cast

from loguru import logger

from llmling.errors import AgentRunError
from llmling.ipc.frames import FrameError
from llmling.ipc.jetstream import decode, encode, result_msg_id
from llmling.ipc.messages import ErrorFrame, RemoteReply, RunFrame
from llmling.ipc.nats_subjects import Subjects

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

    from llmling.supervisor.replicas import AgentReplicas

Message = dict[str, Any]

# Seconds one fetch waits for a run before asking again (also how soon a cancelled loop notices nothing).
FETCH_WAIT = 2.0
# Seconds between two tries when the server is unreachable or the runner is not ready.
IDLE_WAIT = 0.2
# Seconds before a run is offered again when this host cannot run it (agent unavailable, reply not published).
# A run whose process died (kind "crash") is nak'ed without a delay: JetStream then gives it to the next free
# place before any new run (a delayed one would queue behind them while other places take new runs).
NAK_DELAY = 0.5
# Chunks of one run buffered towards NATS at most (older ones are dropped: chunks are best effort).
CHUNK_BUFFER = 1024
# Kinds after which the run is given back to JetStream rather than answered.
REDELIVERED_KINDS = ("crash", "unavailable")


async def serve_agent(
    js: JetStreamContext,
    subjects: Subjects,
    agent: str,
    runner: AgentReplicas,
    ack_wait: float,
    places: int | None = None,
    host: str | None = None,
    grace: float = 10.0,
    cut: asyncio.Event | None = None,
) -> None:
    """Serve `agent`'s runs from its durable consumer with `runner` until cancelled: `places` runs at once
    (default: the runner's concurrency x its processes). Once cancelled, runs in flight get `grace` seconds,
    or until `cut` is set (a second Ctrl+C), then are nak'ed."""
    log = logger.bind(agent=agent)
    places = places or runner.places
    host = host or socket.gethostname()
    sub = await js.pull_subscribe_bind(subjects.consumer(agent), stream=subjects.stream)
    free = asyncio.Semaphore(places)
    handlers: set[asyncio.Task[None]] = set()

    def finished(task: asyncio.Task[None]) -> None:
        handlers.discard(task)
        free.release()

    try:
        while True:
            await free.acquire()
            msg = await _fetch_one(sub, runner, log)
            if msg is None:
                free.release()
                continue
            task = asyncio.create_task(_handle(js, subjects, runner, msg, ack_wait, host, log))
            handlers.add(task)
            task.add_done_callback(finished)
    finally:
        # Cancelled (or the subscription failed): no new fetch; runs in flight get `grace`, then are nak'ed.
        if handlers:
            await _grace(handlers, grace, cut)
            for task in list(handlers):
                task.cancel()
            if handlers:
                await asyncio.wait(set(handlers))
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def _grace(handlers: set[asyncio.Task[None]], grace: float, cut: asyncio.Event | None) -> None:
    """Until the runs in flight (`handlers`) ended, `grace` seconds passed, or `cut` is set."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    cut_wait = asyncio.ensure_future((cut or asyncio.Event()).wait())
    try:
        while handlers and not cut_wait.done() and (left := deadline - loop.time()) > 0:
            await asyncio.wait({*handlers, cut_wait}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
    finally:
        cut_wait.cancel()


async def _fetch_one(sub: Any, runner: AgentReplicas, log: Any) -> Msg | None:
    """One run when the runner is ready and one is there within FETCH_WAIT; else nothing (after a nap when
    the server or the runner is not available)."""
    from nats.errors import ConnectionClosedError
    from nats.errors import Error as NatsError
    from nats.errors import TimeoutError as NatsTimeout

    # None of its places would start a run at once (e.g. while a replica restarts): its share of the runs
    # stays in the queue for other hosts instead of waiting here.
    if runner.state != "ready" or runner.free_places == 0:
        await asyncio.sleep(IDLE_WAIT)
        return None
    try:
        messages = await sub.fetch(1, timeout=FETCH_WAIT)
        return messages[0] if messages else None
    except (NatsTimeout, TimeoutError):
        return None
    except ConnectionClosedError:
        raise
    except NatsError as exc:
        log.warning("fetching a run failed: {}", exc)
        await asyncio.sleep(IDLE_WAIT)
        return None


async def _handle(
    js: JetStreamContext, subjects: Subjects, runner: AgentReplicas, msg: Msg, ack_wait: float, host: str, log: Any
) -> None:
    """Run one delivered message to an outcome: replied + acked, nak'ed, or terminated (undecodable)."""
    try:
        frame = cast(RunFrame, decode(msg.data))
        if frame.get("t") != "run" or not isinstance(frame.get("id"), str):
            raise FrameError("not a run frame")
    except FrameError as exc:
        log.error("dropping a message that is not a run ({}): {}", msg.subject, exc)
        with contextlib.suppress(Exception):
            await msg.term()
        return
    run_id = frame["id"]
    frame["attempt"] = int(frame.get("attempt") or 1) + msg.metadata.num_delivered - 1
    progress = asyncio.create_task(_progress(msg, ack_wait))
    chunks = _ChunkForwarder(js, subjects.chunk(run_id), run_id) if frame.get("stream") else None
    try:
        try:
            result = await runner.submit(frame, chunks.push if chunks else None)
            reply: RemoteReply = {
                "id": run_id,
                "attempt": frame["attempt"],
                "host": host,
                "pid": _pid(runner),
                "reply": result,
            }
        except AgentRunError as exc:
            if exc.kind in REDELIVERED_KINDS:
                log.warning("run {} attempt {} not run here ({}): {}", run_id, frame["attempt"], exc.kind, exc)
                await msg.nak(delay=None if exc.kind == "crash" else NAK_DELAY)
                return
            error: ErrorFrame = {"t": "error", "re": run_id, **exc.reply_fields()}  # type: ignore[typeddict-item]
            reply = {"id": run_id, "attempt": frame["attempt"], "host": host, "pid": _pid(runner), "reply": error}
        if chunks is not None:
            await chunks.close()
        await js.publish(subjects.result, encode(dict(reply)), headers=result_msg_id(run_id, frame["attempt"]))
        await msg.ack()
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(msg.nak()), 1.0)
        raise
    except Exception as exc:
        # Not answered (the server went away, a reply too large, ...): JetStream offers it again.
        log.error("run {}: no reply published ({}); it is redelivered", run_id, exc)
        with contextlib.suppress(Exception):
            await msg.nak(delay=NAK_DELAY)
    finally:
        progress.cancel()
        if chunks is not None:
            chunks.cancel()


async def _progress(msg: Msg, ack_wait: float) -> None:
    """Keep a running run ours: a progress ack every ack_wait / 3 (a lost one is retried at the next tick)."""
    while True:
        await asyncio.sleep(ack_wait / 3)
        with contextlib.suppress(Exception):
            await msg.in_progress()


def _pid(runner: AgentReplicas) -> int | None:
    """The agent's first process, as its status names it."""
    return runner.replicas[0].pid if runner.replicas else None


class _ChunkForwarder:
    """Sends a run's chunks on core NATS in order, from the runner's synchronous chunk callback."""

    def __init__(self, js: JetStreamContext, subject: str, run_id: str) -> None:
        self._nc = js._nc  # the connection the context publishes on (core NATS for chunks)
        self._subject = subject
        self._run_id = run_id
        self._queue: asyncio.Queue[Message | None] = asyncio.Queue(CHUNK_BUFFER)
        self._task = asyncio.create_task(self._send())

    def push(self, chunk: Message) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait({"t": "chunk", "re": self._run_id, "text": chunk.get("text", "")})

    async def _send(self) -> None:
        while (chunk := await self._queue.get()) is not None:
            with contextlib.suppress(Exception):
                await self._nc.publish(self._subject, encode(chunk))

    async def close(self) -> None:
        """Send what is buffered (the chunks go out before the reply)."""
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self._task), 5.0)

    def cancel(self) -> None:
        self._task.cancel()


__all__ = ["serve_agent"]
