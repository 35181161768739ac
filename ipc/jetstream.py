"""JetStream pieces of the NATS transport: the stream, the consumers, and the JSON codec of what travels.

Both ends (the supervisor and `llmling host`) call the `ensure_*` functions: each creates what is missing and
accepts what exists (idempotent; a second supervisor or a host that starts first changes nothing). Plain values
only (names, numbers): `ipc/` knows transports, not agents. The wire protocol is in docs/ARCHITECTURE.md
("Across hosts: the NATS transport").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loguru import logger

from llmling.ipc.frames import FrameError, FrameTooLarge, _body
from llmling.ipc.frames import decode as decode_body
from llmling.ipc.nats_connect import MAX_PAYLOAD
from llmling.ipc.nats_subjects import Subjects

if TYPE_CHECKING:
    from nats.js import JetStreamContext

Message = dict[str, Any]

# Seconds within which a message published twice with the same `Nats-Msg-Id` is stored once.
DUPLICATE_WINDOW = 120.0
# The header JetStream deduplicates on.
MSG_ID = "Nats-Msg-Id"
# JetStream's error code for "stream name already in use with a different configuration".
STREAM_EXISTS = 10058


def encode(message: Message) -> bytes:
    """`message` as compact UTF-8 JSON; FrameTooLarge (nothing sent) beyond MAX_PAYLOAD."""
    body = _body(message)
    if len(body) > MAX_PAYLOAD:
        raise FrameTooLarge(len(body), MAX_PAYLOAD)
    return body


def decode(data: bytes) -> Message:
    """A JSON object (same envelope checks as the socket's frames); FrameError otherwise."""
    if len(data) > MAX_PAYLOAD:
        raise FrameError(f"message of {len(data)} bytes exceeds the limit of {MAX_PAYLOAD}")
    return decode_body(data)


def run_msg_id(run_id: str, attempt: int) -> dict[str, str]:
    """Headers of a run's publish: a re-publish of the same attempt is stored once."""
    return {MSG_ID: f"{run_id}:{attempt}"}


def result_msg_id(run_id: str, attempt: int) -> dict[str, str]:
    """Headers of a reply's publish: a host that publishes the same reply twice is stored once."""
    return {MSG_ID: f"result:{run_id}:{attempt}"}


def max_deliveries(max_attempts: int, redeliver_crash: bool) -> int:
    """The run consumer's `max_deliver`: the retry policy's attempts when crashes are retried, else 1."""
    return max_attempts if redeliver_crash else 1


def max_deliveries_advisory(subjects: Subjects, consumer: str) -> str:
    """The core subject on which the server tells that a message of `consumer` ran out of deliveries."""
    return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{subjects.stream}.{consumer}"


async def ensure_stream(js: JetStreamContext, subjects: Subjects) -> None:
    """Create the work-queue stream (file storage) if missing; an existing one is accepted as it is."""
    from nats.js.api import RetentionPolicy, StorageType, StreamConfig
    from nats.js.errors import APIError

    config = StreamConfig(
        name=subjects.stream,
        subjects=subjects.stream_subjects,
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW,
    )
    try:
        await js.add_stream(config)
    except APIError as exc:
        if exc.err_code != STREAM_EXISTS:
            raise
        # Made by another version or by hand: used as it is (its subjects must still capture ours).
        logger.bind(agent="nats").warning("stream {} exists with another configuration; using it", subjects.stream)


async def ensure_run_consumer(
    js: JetStreamContext, subjects: Subjects, agent: str, ack_wait: float, max_deliver: int
) -> None:
    """The durable pull consumer of `agent`'s runs, shared by every replica on every host."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    await _ensure_consumer(
        js,
        subjects.stream,
        ConsumerConfig(
            durable_name=subjects.consumer(agent),
            filter_subject=subjects.run(agent),
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=ack_wait,
            max_deliver=max_deliver,
        ),
    )


async def ensure_results_consumer(js: JetStreamContext, subjects: Subjects, ack_wait: float) -> None:
    """The supervisor's durable pull consumer of every remote run's reply."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    await _ensure_consumer(
        js,
        subjects.stream,
        ConsumerConfig(
            durable_name=subjects.results_consumer,
            filter_subject=subjects.result,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=ack_wait,
        ),
    )


async def _ensure_consumer(js: JetStreamContext, stream: str, config: Any) -> None:
    from nats.js.errors import APIError

    try:
        await js.add_consumer(stream, config)
    except APIError:
        # It exists with other settings (another config version): keep it rather than fail the start.
        await js.consumer_info(stream, config.durable_name)
        logger.bind(agent="nats").warning("consumer {} exists with other settings; using it", config.durable_name)
