"""One system across hosts over NATS JetStream: a real `nats-server -js`, a real `llmling up` and real
`llmling host` processes (each its own process tree, told apart by `--name`).

Floods go in through a webhook of `up` (a 202 names the accepted run's id) and come out as history rows;
failure tests count: N accepted, N reached an outcome, 0 lost. Runs that must be in flight when something is
killed wait for a gate file, so the tests wait on counts, never on time.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmling.testing import NatsServer, SystemProcess, llmling_command, tagged_processes, wait_gone
from tests._automation import free_port, wait_until
from tests._hosts import Hosts
from tests.conftest import Systems
from tests.test_delivery import history_ids, post_many, query
from tests.test_systemd import parse_unit, receive_all

# `whoami` answers with its pid; `gated` notes "start <run id> <pid>" in runs.txt, waits for GATE beside it,
# notes "done <run id> <pid>" and answers with its pid.
WORK = """
import asyncio
import os

from llmling import RunContext

HERE = os.path.dirname(os.path.abspath(__file__))


def _note(line):
    with open(os.path.join(HERE, "runs.txt"), "a") as out:
        out.write(line + "\\n")


def whoami(prompt):
    return f"{os.getpid()}: {prompt}"


async def gated(prompt, run: RunContext):
    _note(f"start {run.id} {os.getpid()}")
    while not os.path.exists(os.path.join(HERE, "GATE")):
        await asyncio.sleep(0.01)
    _note(f"done {run.id} {os.getpid()}")
    return f"{os.getpid()}: {prompt}"
"""


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    factory = Hosts()
    yield factory
    problems = factory.close()
    assert not problems, "\n".join(problems)


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    with NatsServer(tmp_path / "nats") as server:
        yield server


def config(url: str, agents: str, extra: str = "") -> str:
    # The name is the file's ("system" under `Systems`, whose history the helpers of test_delivery read).
    return f"""
        shutdown_timeout: 5
        transport: {{nats: {{url: "{url}", ack_wait: 1, host_heartbeat: 0.3}}}}
        {extra}
        agents:
        {agents}
        """


def webhook_agent(port: int, callback: str, replicas: int) -> str:
    return f"""
          work:
            callback: {callback}
            placement: remote
            replicas: {replicas}
            max_queue: 5000
            retry: {{max_attempts: 5, backoff: 0.05}}
            triggers:
              - {{type: webhook, name: in, port: {port}, path: /in}}
        """


def flood_system(
    nats: NatsServer, systems: Systems, callback: str, replicas: int
) -> tuple[SystemProcess, str, Path]:
    """`up` of one remote agent `work` with a webhook (its URL) and `replicas`; started (no host yet)."""
    port = free_port()
    system = systems.make(config(nats.url, webhook_agent(port, callback, replicas)), modules={"work": WORK})
    system.start(until=system_ready)
    return system, f"http://127.0.0.1:{port}/in", system.config.parent


def system_ready(status: dict) -> bool:  # type: ignore[type-arg]
    return status.get("state") == "ready"


def runs_noted(folder: Path, kind: str) -> list[tuple[str, int]]:
    path = folder / "runs.txt"
    lines = path.read_text().splitlines() if path.exists() else []
    return [(run_id, int(pid)) for what, run_id, pid in (line.split() for line in lines) if what == kind]


def pids_in_history(system: SystemProcess) -> dict[int, int]:
    """Runs per answering pid, from the history's contents ("<pid>: <prompt>")."""
    counts: dict[int, int] = {}
    for (content,) in query(system, "SELECT content FROM runs"):
        pid = int(content.split(":", 1)[0])
        counts[pid] = counts.get(pid, 0) + 1
    return counts


def test_a_chain_with_b_on_another_host(nats: NatsServer, systems: Systems, hosts: Hosts) -> None:
    agents = """
          a: {callback: "cb:echo", connections: [b]}
          b: {callback: "work:whoami", placement: remote}
        """
    system = systems.make(config(nats.url, agents), modules={"work": WORK})
    system.start(until=system_ready)
    host = hosts.start(system.config, "h1")
    (b_pid,) = host.pids("b")
    done = system.cli("send", "a", "hi", "--wait", "--json")
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert reply["content"] == "echo: hi"
    (downstream,) = reply["downstream"]
    assert downstream["agent"] == "b" and downstream["content"] == f"{b_pid}: echo: hi"
    # The supervisor lists b's process on its host (from the host's reports).
    wait_until(
        lambda: any(
            item.get("host") == "h1" and item.get("pid") == b_pid
            for agent in system.status()["agents"]
            if agent["name"] == "b"
            for item in agent.get("processes") or [agent]
        ),
        timeout=30,
        what="b's remote process in status",
    )
    # The host's own socket shows its processes under its name; it does not reload (its config is a copy).
    assert [item["host"] for item in host.status()["agents"][0]["processes"]] == ["h1"]
    refused = subprocess.run(
        [*llmling_command(), "reload", "--socket", str(host.socket)], capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 1 and "an agent host does not reload" in refused.stderr
    # Ctrl+C/SIGTERM of the host: exit 0, nothing of it left.
    assert host.stop() == 0, host.log_text()
    assert wait_gone(host.tag, 15) == []


async def test_replicas_3_spread_300_runs_over_three_processes(
    nats: NatsServer, systems: Systems, hosts: Hosts
) -> None:
    system, url, _ = flood_system(nats, systems, "work:whoami", 3)
    host = hosts.start(system.config, "h1")
    pids = host.pids("work")
    assert len(pids) == 3
    accepted = await post_many(url, 300)
    assert len(accepted) == 300
    wait_until(lambda: len(history_ids(system)) >= 300, timeout=90, what="300 outcomes")
    assert sorted(history_ids(system)) == sorted(accepted)
    served = pids_in_history(system)
    assert set(served) == set(pids), served  # every replica served some, nothing else did
    assert sum(served.values()) == 300


def check_flood_outcome(system: SystemProcess, folder: Path, accepted: dict[str, str]) -> None:
    """N accepted → N outcomes under their ids, 0 lost; a run that started twice kept its id."""
    wait_until(lambda: len(history_ids(system)) >= len(accepted), timeout=120, what="every outcome")
    rows = query(system, "SELECT run_id, prompt FROM runs")
    assert {run_id: prompt for run_id, prompt in rows} == accepted
    assert len(rows) == len(accepted)
    started = runs_noted(folder, "start")
    assert {run_id for run_id, _ in started} == set(accepted)
    assert {run_id for run_id, _ in runs_noted(folder, "done")} == set(accepted)


async def test_sigkill_of_a_replica_with_500_runs_accepted_loses_none(
    nats: NatsServer, systems: Systems, hosts: Hosts
) -> None:
    system, url, folder = flood_system(nats, systems, "work:gated", 3)
    host = hosts.start(system.config, "h1")
    accepted = await post_many(url, 500)
    assert len(accepted) == 500
    # Each replica holds one run in flight (the gate is closed).
    wait_until(lambda: len(runs_noted(folder, "start")) >= 3, timeout=60, what="3 runs in flight")
    victim_run, victim = runs_noted(folder, "start")[0]
    assert victim in host.pids("work")
    os.kill(victim, signal.SIGKILL)
    (folder / "GATE").touch()
    check_flood_outcome(system, folder, accepted)
    assert victim not in pids_in_history(system)
    # The killed run went back to the queue (nak) and ran again in another process, under the same id.
    again = [pid for run, pid in runs_noted(folder, "start") if run == victim_run]
    assert again[0] == victim and len(again) >= 2 and victim not in again[1:]


async def test_sigkill_of_one_host_of_two_with_500_runs_accepted_loses_none(
    nats: NatsServer, systems: Systems, hosts: Hosts
) -> None:
    system, url, folder = flood_system(nats, systems, "work:gated", 1)
    doomed = hosts.start(system.config, "h1", "--replicas", "work=2")
    survivor = hosts.start(system.config, "h2")
    doomed_pids = doomed.pids("work")
    accepted = await post_many(url, 500)
    assert len(accepted) == 500
    wait_until(
        lambda: len({pid for _, pid in runs_noted(folder, "start")} & set(doomed_pids)) == 2,
        timeout=60,
        what="runs in flight on the doomed host",
    )
    in_flight = {run for run, pid in runs_noted(folder, "start") if pid in doomed_pids}
    doomed.kill()
    # Its agents end with it (parent-death signal), as under `up`.
    assert wait_gone(doomed.tag, 15) == []
    (folder / "GATE").touch()
    check_flood_outcome(system, folder, accepted)
    # Its runs in flight were redelivered (after ack_wait) to the other host, under the same ids.
    served = {run for run, pid in runs_noted(folder, "done")}
    assert in_flight <= served
    assert set(pids_in_history(system)) <= set(survivor.pids("work"))


async def test_nats_server_restart_mid_flood_loses_nothing(
    nats: NatsServer, systems: Systems, hosts: Hosts
) -> None:
    system, url, folder = flood_system(nats, systems, "work:gated", 2)
    hosts.start(system.config, "h1")
    accepted = await post_many(url, 300)
    assert len(accepted) == 300
    wait_until(lambda: runs_noted(folder, "start"), timeout=60, what="a run in flight")
    nats.restart(kill=True)  # JetStream's file storage keeps the stream and the consumers
    (folder / "GATE").touch()
    check_flood_outcome(system, folder, accepted)


LONE_B = """
          b: {callback: "work:whoami", placement: remote}
        """


def run_host(config_file: Path, name: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*llmling_command(), "host", "--config", str(config_file), "--name", name],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


def test_a_second_ctrl_c_of_a_host_gives_its_run_back_at_once(
    nats: NatsServer, systems: Systems, hosts: Hosts
) -> None:
    """The first Ctrl+C of a host waits for its run in flight (`shutdown_timeout`: 600 s here); a second one
    nak's it at once: the host exits 0, another host answers the run under the same id, nothing is lost."""
    system = systems.make(
        f"""
        shutdown_timeout: 600
        transport: {{nats: {{url: "{nats.url}", ack_wait: 1, host_heartbeat: 0.3}}}}
        agents:
          g: {{callback: "work:gated", placement: remote}}
        """,
        modules={"work": WORK},
    )
    system.start(until=system_ready)
    folder = system.config.parent
    first = hosts.start(system.config, "h1")
    command = [*llmling_command(), "send", "g", "hold on", "--json", "--socket", str(system.socket)]
    sender = subprocess.Popen(command, env=system.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ((run_id, first_pid),) = wait_until(lambda: runs_noted(folder, "start") or None, 60, "the run on h1")
    assert first.process is not None
    first.process.send_signal(signal.SIGINT)
    wait_until(lambda: "shutting down" in first.log_text(), 60, "h1 to begin its stop")
    first.process.send_signal(signal.SIGINT)
    assert first.process.wait(120) == 0, first.log_text()
    hosts.start(system.config, "h2")

    def started_again() -> list[tuple[str, int]] | None:
        return [noted for noted in runs_noted(folder, "start") if noted[1] != first_pid] or None

    ((again_id, second_pid),) = wait_until(started_again, 60, "the run again, on h2")
    assert again_id == run_id
    (folder / "GATE").touch()
    out, err = sender.communicate(timeout=120)
    assert sender.returncode == 0, err
    reply = json.loads(out)
    assert reply["id"] == run_id and reply["content"] == f"{second_pid}: hold on"
    assert runs_noted(folder, "done") == [(run_id, second_pid)]


def test_a_host_without_credentials_is_refused_with_one_line(tmp_path: Path, hosts: Hosts) -> None:
    with NatsServer(tmp_path / "nats", user="llm", password="s3cret-pw") as server:
        folder = tmp_path / "system"
        folder.mkdir()
        (folder / "work.py").write_text(WORK)
        plain = folder / "plain.yml"
        plain.write_text(
            textwrap.dedent(config(server.url, LONE_B)).replace("ack_wait: 1", "ack_wait: 1, connect_timeout: 2")
        )
        refused = run_host(plain, "h1")
        assert refused.returncode == 1
        assert "Traceback" not in refused.stderr
        (line,) = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
        assert line.startswith("error: cannot connect to NATS at ") and "authorization violation" in line
        # With the credentials the config names (the password from an environment variable), it serves.
        signed = folder / "signed.yml"
        signed.write_text(
            textwrap.dedent(config(server.url, LONE_B)).replace(
                "ack_wait: 1", "ack_wait: 1, user: llm, password_env: NATS_PW"
            )
        )
        host = hosts.make(signed, "h2", env={"NATS_PW": "s3cret-pw"})
        host.start()
        assert "s3cret-pw" not in host.log_text()
        assert tagged_processes(host.tag)


async def test_a_host_answers_a_run_from_jetstream_and_reports_its_processes(
    tmp_path: Path, nats: NatsServer, hosts: Hosts
) -> None:
    """The host's end of the wire protocol alone: a run frame published to `run.b` is answered on `result`
    with a RemoteReply naming the host and the process; reports arrive on `hosts`; SIGTERM ends it with a
    `leaving` report and exit 0."""
    from llmling.ipc.jetstream import decode, encode, ensure_results_consumer, ensure_stream, run_msg_id
    from llmling.ipc.nats_connect import NatsOptions, connect
    from llmling.ipc.nats_subjects import Subjects

    folder = tmp_path / "system"
    folder.mkdir()
    (folder / "work.py").write_text(WORK)
    config_file = folder / "xh.yml"
    config_file.write_text(textwrap.dedent(config(nats.url, LONE_B)))
    subjects = Subjects("llmling", config_file.stem)
    client = await connect(NatsOptions(nats.url))
    try:
        js = client.jetstream()
        await ensure_stream(js, subjects)
        await ensure_results_consumer(js, subjects, 5.0)
        reports: list[dict] = []  # type: ignore[type-arg]

        async def on_report(msg) -> None:  # type: ignore[no-untyped-def]
            reports.append(decode(msg.data))

        await client.subscribe(subjects.hosts, cb=on_report)
        host = hosts.make(config_file, "h1")
        await asyncio.to_thread(host.start)
        (pid,) = host.pids("b")
        frame = {
            "t": "run", "id": "run-1", "prompt": "hi", "trace_id": "t-1", "parent_id": None,
            "hops": 0, "stream": False, "attempt": 1, "timeout": 30,
        }  # fmt: skip
        await js.publish(subjects.run("b"), encode(frame), headers=run_msg_id("run-1", 1))
        results = await js.pull_subscribe_bind(subjects.results_consumer, stream=subjects.stream)
        (msg,) = await results.fetch(1, timeout=30)
        reply = decode(msg.data)
        await msg.ack()
        assert reply["id"] == "run-1" and reply["attempt"] == 1
        assert reply["host"] == "h1" and reply["pid"] == pid
        assert reply["reply"]["t"] == "result" and reply["reply"]["content"] == f"{pid}: hi"
        await asyncio.to_thread(wait_until, lambda: reports, 30, "a host report")
        first = reports[0]
        assert first["host"] == "h1" and not first["leaving"] and first["pid"] == host.process.pid
        (process,) = first["agents"]["b"]
        assert process["pid"] == pid and process["host"] == "h1" and process["state"] == "ready"
        assert await asyncio.to_thread(host.stop) == 0, host.log_text()
        await asyncio.to_thread(wait_until, lambda: reports[-1]["leaving"], 30, "the leaving report")
    finally:
        await client.close()


def test_a_host_under_systemd_notify(tmp_path: Path, short_dir: Path, nats: NatsServer, hosts: Hosts) -> None:
    """Type=notify: READY=1 once its processes are READY and NATS is connected; STOPPING=1 on SIGTERM."""
    folder = tmp_path / "system"
    folder.mkdir()
    (folder / "work.py").write_text(WORK)
    config_file = folder / "xh.yml"
    config_file.write_text(textwrap.dedent(config(nats.url, LONE_B)))
    path = short_dir / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        host = hosts.make(config_file, "h1", "--replicas", "b=2", env={"NOTIFY_SOCKET": str(path)})
        host.spawn()
        ready = receive_all(sock, "READY=1")[-1].splitlines()
        assert "READY=1" in ready
        assert any(line.startswith("STATUS=running: 1/1 agents ready") for line in ready), ready
        assert len(host.pids("b")) == 2
        assert host.process is not None
        host.process.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in receive_all(sock, "STOPPING=1")[-1].splitlines()
        assert host.process.wait(30) == 0
    assert wait_gone(host.tag, 15) == []


def test_systemd_unit_of_a_host(tmp_path: Path) -> None:
    config_file = tmp_path / "agents.yml"
    config_file.write_text(textwrap.dedent(config("nats://127.0.0.1:4222", LONE_B)))
    command = [
        *llmling_command(),
        "systemd-unit",
        "--host",
        str(config_file),
        "--replicas",
        "b=2",
        "--name",
        "gpu1",
    ]
    unit = parse_unit(subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout)
    service = unit["Service"]
    assert service["Type"] == "notify" and service["KillMode"] == "mixed" and "ExecReload" not in service
    assert service["ExecStart"].split()[1:] == [
        "host",
        "--config",
        str(config_file),
        "--replicas",
        "b=2",
        "--name",
        "gpu1",
    ]
    assert service["EnvironmentFile"] == "-%E/llmling/agents.env"
    assert "LLMLING_SOCKET" not in service.get("Environment", "")
    # A host of a config without NATS, or of an agent it does not have, is refused with one line.
    refused = subprocess.run([*command[:-4], "--only", "nope"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and refused.stderr.startswith("error: --only: unknown agent 'nope'")
