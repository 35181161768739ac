"""The supervisor's side of the NATS transport: remote agents, their replies, states and failures.

Real parts only: a real `nats-server -js`, a real `llmling up`, and as hosts either real `llmling host`
processes or the test itself acting as one with a plain NATS client (to control exactly what a host answers:
duplicates, naks). Waits are on conditions, never on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
from pathlib import Path
from typing import Any

import pytest
from nats.errors import TimeoutError as NatsTimeout

from llmling.config import load_config
from llmling.ipc.frames import FrameError, FrameTooLarge
from llmling.ipc.jetstream import decode, encode, result_msg_id
from llmling.ipc.nats_connect import MAX_PAYLOAD, NatsConnectError, NatsOptions, connect, options_from_config
from llmling.ipc.nats_subjects import Subjects
from llmling.testing import NatsServer, SystemProcess
from tests import test_across_hosts
from tests._automation import wait_until
from tests._hosts import Hosts
from tests.conftest import Systems
from tests.test_across_hosts import WORK, runs_noted
from tests.test_delivery import query

SYSTEM = "system"  # the name tests.test_delivery.query finds the history of
SUBJECTS = Subjects("llmling", SYSTEM)
# The fixtures of the across-hosts tests: `hosts` (llmling host processes, checked for leftovers) and `nats`.
hosts = test_across_hosts.hosts
nats = test_across_hosts.nats


def config(url: str, agents: str, nats_extra: str = "") -> str:
    return f"""
        name: {SYSTEM}
        shutdown_timeout: 5
        transport: {{nats: {{url: "{url}", ack_wait: 1, host_heartbeat: 0.3{nats_extra}}}}}
        agents:
        {agents}
        """


def up(status: dict[str, Any]) -> bool:
    return status.get("state") == "ready"


def entry(system: SystemProcess, name: str) -> dict[str, Any]:
    return next(item for item in system.status()["agents"] if item["name"] == name)


def state_is(system: SystemProcess, name: str, state: str) -> bool:
    return entry(system, name)["state"] == state


def send(system: SystemProcess, agent: str, prompt: str) -> dict[str, Any]:
    return system.request({"t": "send", "agent": agent, "prompt": prompt}, timeout=90)


def result(run_id: str, attempt: int, content: str) -> dict[str, Any]:
    return {
        "id": run_id,
        "attempt": attempt,
        "host": "test-host",
        "pid": None,
        "reply": {"t": "result", "re": run_id, "content": content, "usage": {}, "elapsed": 0.0},
    }


async def test_replies_are_deduplicated_and_one_outcome_is_recorded(systems: Systems, nats: NatsServer) -> None:
    system = systems.make(config(nats.url, "  b: {callback: 'cb:echo', placement: remote}"))
    system.start(until=up)  # `up` does not wait for a host of b
    assert state_is(system, "b", "starting")
    reply = asyncio.create_task(asyncio.to_thread(send, system, "b", "hi"))
    client = await connect(NatsOptions(url=nats.url, name="test host"))
    try:
        js = client.jetstream()
        pull = await js.pull_subscribe_bind(SUBJECTS.consumer("b"), stream=SUBJECTS.stream)
        (msg,) = await pull.fetch(1, timeout=60)
        frame = decode(msg.data)
        assert frame["t"] == "run" and frame["prompt"] == "hi" and frame["attempt"] == 1
        assert msg.headers is not None and msg.headers["Nats-Msg-Id"] == f"{frame['id']}:1"
        run_id = frame["id"]
        # The same reply published twice (a host retrying its publish): JetStream stores it once.
        acks = [
            await js.publish(SUBJECTS.result, encode(result(run_id, 1, "first")), headers=result_msg_id(run_id, 1))
            for _ in range(2)
        ]
        assert not acks[0].duplicate and acks[1].duplicate
        # A second host's late reply for the same run (another attempt): stored, but no second outcome.
        late = encode(result(run_id, 2, "late duplicate"))
        await js.publish(SUBJECTS.result, late, headers=result_msg_id(run_id, 2))
        await msg.ack()
        answer = await reply
        assert answer["t"] == "result" and answer["content"] == "first" and answer["id"] == run_id

        async def results_taken() -> bool:
            info = await js.consumer_info(SUBJECTS.stream, SUBJECTS.results_consumer)
            return info.num_pending == 0 and info.num_ack_pending == 0

        for _ in range(600):
            if await results_taken():
                break
            await asyncio.sleep(0.05)
        assert await results_taken()
    finally:
        await client.close()
    wait_until(lambda: query(system, "SELECT content FROM runs WHERE run_id = ?", run_id), timeout=30)
    assert query(system, "SELECT content FROM runs WHERE run_id = ?", run_id) == [("first",)]


async def test_a_run_nobody_finishes_in_max_deliver_tries_is_a_dead_letter(
    systems: Systems, nats: NatsServer
) -> None:
    agents = "  b: {callback: 'cb:echo', placement: remote, retry: {max_attempts: 2, backoff: 0.05}}"
    system = systems.make(config(nats.url, agents))
    system.start(until=up)
    reply = asyncio.create_task(asyncio.to_thread(send, system, "b", "doomed"))
    client = await connect(NatsOptions(url=nats.url, name="test host"))
    try:
        js = client.jetstream()
        pull = await js.pull_subscribe_bind(SUBJECTS.consumer("b"), stream=SUBJECTS.stream)
        seen = []
        for delivery in (1, 2):
            (msg,) = await pull.fetch(1, timeout=60)
            assert msg.metadata.num_delivered == delivery
            seen.append(decode(msg.data)["id"])
            await msg.nak()  # the process died: redelivered, until max_deliver (2)
        assert seen[0] == seen[1]
        # A host keeps asking for runs: the server then finds the run out of deliveries (its advisory).
        while not reply.done():
            with contextlib.suppress(NatsTimeout):
                assert await pull.fetch(1, timeout=0.5) == [], "delivered past max_deliver"
        answer = await reply
    finally:
        await client.close()
    assert answer["t"] == "error" and answer["kind"] == "crash", answer
    letters = system.request({"t": "dead_letters"})["dead_letters"]
    (letter,) = [item for item in letters if item["id"] == seen[0]]
    assert letter["attempts"] == 2 and letter["reason"].startswith("crash:")


def test_a_run_whose_host_dies_before_acking_is_redelivered_with_its_id(
    systems: Systems, hosts: Hosts, nats: NatsServer
) -> None:
    system = systems.make(
        config(nats.url, "  b: {callback: 'work:gated', placement: remote}"), modules={"work": WORK}
    )
    folder = system.config.parent
    system.start(until=up)
    doomed = hosts.start(system.config, "h1")
    wait_until(lambda: state_is(system, "b", "ready"), timeout=30, what="b ready")
    processes = entry(system, "b")["processes"]
    assert [(p["host"], p["state"]) for p in processes] == [("h1", "ready")]
    sender = SendInThread(system, "b", "survive")
    (started,) = wait_until(lambda: runs_noted(folder, "start"), timeout=60, what="the run started on h1")
    run_id, first_pid = started
    doomed.kill_all()  # SIGKILL of the host and its agent, mid-run: never acked
    wait_until(lambda: state_is(system, "b", "unreachable"), timeout=30, what="b unreachable")
    (folder / "GATE").touch()
    survivor = hosts.start(system.config, "h2")
    (second_pid,) = survivor.pids("b")
    answer = sender.join()
    assert answer["t"] == "result" and answer["id"] == run_id, answer
    assert answer["content"] == f"{second_pid}: survive"
    assert [pid for rid, pid in runs_noted(folder, "start") if rid == run_id] == [first_pid, second_pid]
    wait_until(lambda: state_is(system, "b", "ready"), timeout=30, what="b ready again")


def test_status_is_unreachable_while_nats_is_away_and_local_agents_keep_working(
    systems: Systems, hosts: Hosts, nats: NatsServer
) -> None:
    agents = """
          b: {callback: 'work:whoami', placement: remote}
          c: {callback: 'cb:echo'}
        """
    system = systems.make(config(nats.url, agents), modules={"work": WORK})
    system.start(until=up)
    host = hosts.start(system.config, "h1")
    wait_until(lambda: state_is(system, "b", "ready"), timeout=30, what="b ready")
    nats.stop()
    wait_until(lambda: state_is(system, "b", "unreachable"), timeout=30, what="b unreachable")
    assert entry(system, "b")["processes"] == []
    assert send(system, "c", "local")["content"] == "echo: local"  # the local agent does not need NATS
    # A run sent meanwhile waits for NATS (bounded) instead of failing.
    sender = SendInThread(system, "b", "patient")
    nats.start()
    (pid,) = host.pids("b")
    answer = sender.join()
    assert answer["t"] == "result" and answer["content"] == f"{pid}: patient", answer
    wait_until(lambda: state_is(system, "b", "ready"), timeout=30, what="b ready again")
    # `up` tells the operator both changes, naming the host.
    wait_until(lambda: "ready again on h1" in system.log_text(), timeout=30, what="the ready line")
    assert "unreachable" in system.log_text()
    # The transport cannot change in a reload: refused, naming the key; b is still served.
    system.config.write_text(system.config.read_text().replace("ack_wait: 1", "ack_wait: 2"))
    refused = system.cli("reload")
    assert refused.returncode == 1 and "'transport' changed" in refused.stderr, refused.stderr
    assert send(system, "b", "still")["content"] == f"{pid}: still"


def test_placement_any_runs_locally_while_a_place_is_free_then_on_a_host(
    systems: Systems, hosts: Hosts, nats: NatsServer
) -> None:
    system = systems.make(
        config(nats.url, "  b: {callback: 'work:gated', placement: any}"), modules={"work": WORK}
    )
    folder = system.config.parent
    system.start(until=up)
    host = hosts.start(system.config, "h1")
    (remote_pid,) = host.pids("b")
    wait_until(lambda: len(entry(system, "b")["processes"]) == 2, timeout=30, what="both of b's processes")
    local_pid = entry(system, "b")["pid"]
    first = SendInThread(system, "b", "one")
    wait_until(lambda: runs_noted(folder, "start"), timeout=60, what="the first run started")
    second = SendInThread(system, "b", "two")  # the local place is taken: over NATS
    wait_until(lambda: len(runs_noted(folder, "start")) == 2, timeout=60, what="the second run started")
    assert [pid for _, pid in runs_noted(folder, "start")] == [local_pid, remote_pid]
    (folder / "GATE").touch()
    assert first.join()["content"] == f"{local_pid}: one"
    assert second.join()["content"] == f"{remote_pid}: two"


def test_connection_problems_fail_the_start_with_one_line(systems: Systems, nats: NatsServer) -> None:
    agents = "  b: {callback: 'cb:echo', placement: remote}"
    missing = systems.make(config(nats.url, agents, ", user: u, password_env: LLMLING_TEST_NO_SUCH_VAR"))
    assert missing.run() != 0
    assert "transport.nats.password_env: environment variable LLMLING_TEST_NO_SUCH_VAR is not set" in (
        missing.log_text()
    )
    assert "Traceback" not in missing.log_text()
    nats.stop()
    refused = systems.make(config(nats.url, agents, ", connect_timeout: 0.5"))
    assert refused.run() != 0
    assert f"cannot connect to NATS at {nats.url}" in refused.log_text()
    assert "Traceback" not in refused.log_text()


def test_options_from_config_reads_secrets_from_the_environment_and_paths_beside_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "system.yml").write_text(
        textwrap.dedent(
            """
            name: opts
            transport:
              nats: {url: "nats://127.0.0.1:1", user: u, password_env: PW_VAR, creds_file: keys/x.creds,
                     tls: {ca_file: /etc/ca.pem}}
            agents:
              b: {callback: 'cb:echo', placement: remote}
            """
        )
    )
    nats_config = load_config(tmp_path / "system.yml").transport.nats
    assert nats_config is not None
    monkeypatch.setenv("PW_VAR", "pw-value")
    options = options_from_config(nats_config, tmp_path, "llmling opts")
    assert options.password == "pw-value" and options.user == "u"
    assert options.creds_file == str(tmp_path / "keys/x.creds") and options.tls_ca_file == "/etc/ca.pem"
    assert "pw-value" not in repr(options)
    monkeypatch.delenv("PW_VAR")
    with pytest.raises(NatsConnectError, match="password_env: environment variable PW_VAR is not set"):
        options_from_config(nats_config, tmp_path, "llmling opts")


class SendInThread:
    """A `send` running in a thread while the test does other things; `join()` returns its answer."""

    def __init__(self, system: SystemProcess, agent: str, prompt: str) -> None:
        import threading

        self.answer: dict[str, Any] | None = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.answer = send(system, agent, prompt)
            except BaseException as exc:
                self.error = exc

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def join(self, timeout: float = 90.0) -> dict[str, Any]:
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        assert self.answer is not None, "send did not answer"
        return self.answer


def test_the_codec_keeps_the_size_rule_and_refuses_what_is_not_an_object() -> None:
    message = {"t": "run", "id": "r1", "prompt": "é" * 10}
    assert decode(encode(message)) == message
    with pytest.raises(FrameTooLarge):
        encode({"t": "run", "prompt": "x" * MAX_PAYLOAD})
    for bad in (b"[1]", b"{", b"\xff", b'{"id": 5}', b"x" * (MAX_PAYLOAD + 1)):
        with pytest.raises(FrameError):
            decode(bad)
