"""Functional: `llmling up` in a subprocess, driven by the real CLI (`send`, `status`, `stop`) over its socket."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import pytest

from llmling.ipc.frames import HEADER, FrameDecoder, Message, encode
from llmling.testing import SystemProcess, llmling_command, tagged_processes, wait_gone
from tests.conftest import Systems

CHAIN = """\
name: chain
agents:
  a:
    callback: cb:echo
    connections: [b]
  b:
    callback: cb:upper
    connections: [c]
  c:
    callback: cb:echo
  fails:
    callback: cb:boom
  whoami:
    callback: cb:pid
"""


@pytest.fixture(scope="module")
def chain(module_systems: Systems) -> SystemProcess:
    return module_systems.start(CHAIN)


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, text
    return lines[0]


def raw_exchange(path: os.PathLike[str] | str, data: bytes) -> tuple[list[Message], bool]:
    """Send raw bytes on a new connection; read until the server closes it (or half a second passes after a
    frame came). Returns the frames and whether the server closed the connection."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(os.fspath(path))
        sock.sendall(data)
        decoder = FrameDecoder()
        frames: list[Message] = []
        while True:
            if frames:
                sock.settimeout(0.5)
            try:
                part = sock.recv(65536)
            except ConnectionResetError:
                return frames, True
            except TimeoutError:
                if frames:
                    return frames, False
                raise
            if not part:
                return frames, True
            frames.extend(decoder.feed(part))


# -- sends and status on one running system ----------------------------------------------------------------
def test_send_prints_the_reply(chain: SystemProcess) -> None:
    done = chain.cli("send", "a", "hello world")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "echo: hello world\n"


def test_send_json(chain: SystemProcess) -> None:
    done = chain.cli("send", "b", "shout", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert set(out) == {"agent", "content", "id", "trace_id", "attempt"}
    assert out["agent"] == "b"
    assert out["content"] == "SHOUT"
    assert isinstance(out["id"], str)
    assert out["id"]
    assert isinstance(out["trace_id"], str)
    assert out["trace_id"]
    again = json.loads(chain.cli("send", "b", "shout", "--json").stdout)
    assert again["id"] != out["id"]
    assert again["trace_id"] != out["trace_id"]


def test_send_dash_reads_stdin(chain: SystemProcess) -> None:
    done = chain.cli("send", "a", "-", input="from stdin\nsecond line")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "echo: from stdin\nsecond line\n"


def test_send_wait_prints_the_downstream_chain(chain: SystemProcess) -> None:
    done = chain.cli("send", "a", "hi", "--wait")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["echo: hi", "[b] ECHO: HI", "[c] echo: ECHO: HI"]


def test_send_wait_json_links_parents(chain: SystemProcess) -> None:
    out = json.loads(chain.cli("send", "a", "hi", "--wait", "--json").stdout)
    first, second = out["downstream"]
    assert (first["agent"], first["content"], first["parent_id"]) == ("b", "ECHO: HI", out["id"])
    assert (second["agent"], second["content"], second["parent_id"]) == ("c", "echo: ECHO: HI", first["id"])


def test_send_to_an_unknown_agent(chain: SystemProcess) -> None:
    done = chain.cli("send", "nobody", "hi")
    assert done.returncode == 1
    assert done.stdout == ""
    assert "unknown agent 'nobody'" in one_line(done.stderr)


def test_a_failing_callback_is_reported_and_the_agent_stays(chain: SystemProcess) -> None:
    before = {agent["name"]: agent for agent in chain.status()["agents"]}["fails"]
    done = chain.cli("send", "fails", "x")
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert "agent 'fails' failed" in line
    assert "boom on 'x'" in line
    after = {agent["name"]: agent for agent in chain.status()["agents"]}["fails"]
    assert after["pid"] == before["pid"]
    assert after["state"] == "ready"
    assert after["restarts"] == before["restarts"]


def test_status_json(chain: SystemProcess) -> None:
    done = chain.cli("status", "--json")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert {"name", "pid", "agents"} <= set(status)
    assert status["name"] == "chain"
    assert status["pid"] == chain.pid
    assert [agent["name"] for agent in status["agents"]] == ["a", "b", "c", "fails", "whoami"]
    for agent in status["agents"]:
        assert {"name", "pid", "state", "restarts"} <= set(agent)
        assert agent["state"] == "ready"
        assert agent["restarts"] == 0
    pids = [agent["pid"] for agent in status["agents"]]
    assert len(set(pids)) == len(pids)
    assert chain.pid not in pids
    assert set(pids) <= set(chain.processes())
    # Each agent answers from the process status names.
    whoami = next(agent["pid"] for agent in status["agents"] if agent["name"] == "whoami")
    assert chain.cli("send", "whoami", "?").stdout.strip() == str(whoami)


def test_status_table(chain: SystemProcess) -> None:
    done = chain.cli("status")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"system chain  supervisor pid {chain.pid}  socket {chain.socket}")
    assert lines[1].split()[:4] == ["AGENT", "PID", "STATE", "RESTARTS"]
    assert [line.split()[0] for line in lines[2:]] == ["a", "b", "c", "fails", "whoami"]
    assert all(line.split()[2] == "ready" for line in lines[2:])


# -- the control socket against bad clients ----------------------------------------------------------------
@pytest.mark.parametrize(
    "data",
    [HEADER.pack(9) + b"not json!", HEADER.pack(4) + b"[42]", HEADER.pack(0x7FFFFFFF), b"hello, plain text\n"],
    ids=["not-json", "not-object", "oversize", "plain-text"],
)
def test_bad_frames_get_an_error_and_close(chain: SystemProcess, data: bytes) -> None:
    frames, closed = raw_exchange(chain.socket, data)
    assert closed
    assert len(frames) == 1
    assert frames[0]["t"] == "error"
    assert frames[0]["error"].startswith("protocol error")
    done = chain.cli("send", "a", "still there?")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "echo: still there?\n"


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        ({"t": "status"}, "field 'id'"),
        ({"t": "launch", "id": "x1"}, "unknown request type 'launch'"),
        ({"t": "send", "id": "x2", "prompt": "p"}, "field 'agent'"),
        ({"t": "send", "id": "x3", "agent": "a", "prompt": 42}, "field 'prompt'"),
        ({"t": "send", "id": "x4", "agent": "ghost", "prompt": "p"}, "unknown agent 'ghost'"),
    ],
    ids=["no-id", "unknown-type", "no-agent", "prompt-not-str", "unknown-agent"],
)
def test_bad_requests_get_an_error_and_the_connection_stays(
    chain: SystemProcess, request_: Message, expected: str
) -> None:
    ping = {"t": "ping", "id": "after"}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(os.fspath(chain.socket))
        sock.sendall(encode(request_) + encode(ping))
        decoder = FrameDecoder()
        frames: list[Message] = []
        while len(frames) < 2:
            part = sock.recv(65536)
            assert part, "the server closed the connection"
            frames.extend(decoder.feed(part))
    # The pong proves the connection stayed open and served the next request.
    error, pong = frames
    assert error["t"] == "error"
    assert expected in error["error"]
    if "id" in request_:
        assert error["re"] == request_["id"]
    assert pong == {"t": "pong", "re": "after"}


# -- life cycle --------------------------------------------------------------------------------------------
PAIR = """\
agents:
  first:
    callback: cb:echo
    connections: [second]
  second:
    callback: cb:upper
"""


def test_sigint_stops_everything(systems: Systems) -> None:
    system = systems.start(PAIR)
    assert system.cli("send", "first", "x").stdout == "echo: x\n"
    processes = system.processes()
    # up, the resource tracker, the forkserver and one process per agent.
    assert len(processes) >= 4, processes
    assert system.socket.exists()
    assert system.process is not None
    system.process.send_signal(signal.SIGINT)
    assert system.process.wait(30) == 0
    assert not system.socket.exists()
    assert wait_gone(system.tag, 10) == []
    log = system.log_text()
    assert "stopping" in log
    assert "Traceback" not in log


def test_llmling_stop_ends_the_system(systems: Systems) -> None:
    system = systems.start(PAIR)
    done = system.cli("stop")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "stopped\n"
    assert system.process is not None
    assert system.process.wait(30) == 0
    assert not system.socket.exists()
    assert wait_gone(system.tag, 10) == []


def test_stop_drains_a_run_in_flight(systems: Systems) -> None:
    config = "agents:\n  slow:\n    callback: cb:slow\n    env_passthrough: [SLOW_SECONDS]\n"
    system = systems.start(config, env={"SLOW_SECONDS": "1"})
    sender = subprocess.Popen(
        [*llmling_command(), "send", "slow", "x", "--socket", str(system.socket)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: system.request({"t": "status"})["pending_runs"] >= 1)
        assert system.cli("stop").returncode == 0
        out, err = sender.communicate(timeout=30)
    finally:
        sender.kill()
        sender.wait()
    assert sender.returncode == 0, err
    assert out == "late\n"
    assert system.process is not None
    assert system.process.wait(30) == 0


def test_send_when_no_system_runs(short_dir: os.PathLike[str]) -> None:
    path = f"{short_dir}/none.sock"
    for args in (["send", "a", "hi"], ["status"], ["stop"]):
        done = subprocess.run(
            [*llmling_command(), *args, "--socket", path], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 1, args
        assert done.stdout == ""
        assert one_line(done.stderr) == f"Error: no system is running on {path}"


def test_a_bad_config_starts_nothing(systems: Systems) -> None:
    system = systems.make("agents:\n  a:\n    callback: cb:echo\n    colour: red\n")
    assert system.run() == 2
    log = system.log_text()
    assert log.splitlines() == [f"error: {system.config}:4: agents.a.colour: unknown key"]
    assert not system.socket.exists()
    assert tagged_processes(system.tag) == []


def test_an_agent_that_cannot_import_fails_the_start(systems: Systems) -> None:
    system = systems.make("agents:\n  broken:\n    callback: no_such_module:run\n")
    assert system.run() == 1
    errors = [line for line in system.log_text().splitlines() if line.startswith("error:")]
    assert len(errors) == 1, system.log_text()
    assert "agent 'broken'" in errors[0]
    assert "no_such_module" in errors[0]
    assert not system.socket.exists()
    assert wait_gone(system.tag, 10) == []


def test_one_failed_agent_does_not_stop_the_others(systems: Systems) -> None:
    def settled(status: Message) -> bool:
        states = {agent["name"]: agent["state"] for agent in status["agents"]}
        return states == {"first": "ready", "second": "ready", "broken": "failed"}

    system = systems.start(PAIR + "  broken:\n    callback: cb:no_such_function\n", until=settled)
    assert "no_such_function" in system.log_text()
    assert system.cli("send", "first", "ok").stdout == "echo: ok\n"
    done = system.cli("send", "broken", "x")
    assert done.returncode == 1
    assert "agent 'broken'" in one_line(done.stderr)


SLOW_FAILING_IMPORT = """
import time

time.sleep(1.0)
raise ImportError("this module never imports")
"""


def test_a_send_to_an_agent_retrying_its_start_fails_when_the_attempt_fails(systems: Systems) -> None:
    def retrying(status: Message) -> bool:
        agents = {agent["name"]: agent for agent in status["agents"]}
        broken = agents["broken"]
        return agents["first"]["state"] == "ready" and broken["state"] == "starting" and broken["restarts"] >= 1

    config = PAIR + "  broken:\n    callback: slowfail:run\n"
    system = systems.start(config, modules={"slowfail": SLOW_FAILING_IMPORT}, until=retrying)
    # Sent while an attempt is under way: it waits for that attempt, and fails with it (not after 60 s).
    done = system.cli("send", "broken", "x", timeout=20)
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert "agent 'broken' failed" in line
    assert "never imports" in line


def test_a_second_system_on_the_same_socket_is_refused(systems: Systems) -> None:
    system = systems.start(PAIR)
    second = SystemProcess(system.config, system.socket, system.log.with_name("second.log"))
    assert second.run() == 1
    assert "already listening" in second.log_text()
    assert system.cli("send", "first", "x").stdout == "echo: x\n"
    assert system.socket.exists()


def wait_for(condition: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.02)
