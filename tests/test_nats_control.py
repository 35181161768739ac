"""Control requests over NATS: `llmling send|status|watch|stop --nats URL --name SYSTEM` from a client that has
no socket (its own XDG_RUNTIME_DIR), against a real `llmling up` and a real nats-server; credentials and TLS."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmling.testing import NatsServer, SystemProcess, llmling_command
from tests.conftest import Systems, short_tempdir

AGENTS = """
agents:
  echo: {callback: 'cb:echo'}
  upper: {callback: 'cb:upper'}
"""


def config(name: str, nats: str) -> str:
    return f"name: {name}\ntransport:\n  nats: {nats}\n{AGENTS}"


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with NatsServer(tmp_path_factory.mktemp("nats")) as server:
        yield server


class Remote:
    """Runs `llmling ...` as a client on another host would: no socket of the system in its runtime dir."""

    def __init__(self, url: str, name: str, env: dict[str, str] | None = None) -> None:
        self.url = url
        self.name = name
        runtime = short_tempdir()
        self.env = {key: value for key, value in os.environ.items() if not key.startswith(("LLMLING_", "NATS_"))}
        self.env.update({"XDG_RUNTIME_DIR": str(runtime), "XDG_STATE_HOME": str(runtime), **(env or {})})

    def args(self, *args: str, nats: bool = True) -> list[str]:
        return [*llmling_command(), *args, *(["--nats", self.url, "--name", self.name] if nats else [])]

    def popen(self, *args: str) -> subprocess.Popen[str]:
        """`llmling ARGS --nats ...` in the background, its stdout (text) piped."""
        command = self.args(*args)
        return subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=self.env, stdin=subprocess.DEVNULL)

    def run(self, *args: str, timeout: float = 60.0, nats: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.args(*args, nats=nats),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            stdin=subprocess.DEVNULL,
        )


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    """The command failed with one line on stderr and no traceback; that line."""
    assert done.returncode != 0, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def test_send_and_status_over_nats_match_the_socket(systems: Systems, nats_server: NatsServer) -> None:
    system = systems.start(config("remote1", f"{{url: '{nats_server.url}'}}"))
    remote = Remote(nats_server.url, "remote1")

    sent = remote.run("send", "echo", "hello")
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.strip() == "echo: hello"

    over_nats = remote.run("send", "echo", "hi", "--json", "--wait")
    over_socket = system.cli("send", "echo", "hi", "--json", "--wait")
    assert over_nats.returncode == over_socket.returncode == 0, over_nats.stderr + over_socket.stderr
    nats_reply, socket_reply = json.loads(over_nats.stdout), json.loads(over_socket.stdout)
    for reply in (nats_reply, socket_reply):
        assert reply.pop("id") and reply.pop("trace_id")
    assert nats_reply == socket_reply == {"agent": "echo", "content": "echo: hi", "attempt": 1, "downstream": []}

    status = remote.run("status", "--json")
    assert status.returncode == 0, status.stderr
    body = json.loads(status.stdout)
    assert body["name"] == "remote1"
    assert body["pid"] == system.pid
    assert {agent["name"]: agent["state"] for agent in body["agents"]} == {"echo": "ready", "upper": "ready"}
    assert body["totals"]["echo"]["runs"] == 3  # two sends over NATS, one over the socket
    assert body == json.loads(system.cli("status", "--json").stdout)
    human = remote.run("status")
    assert human.returncode == 0 and human.stdout == system.cli("status").stdout, human.stderr

    # The same errors and exit codes as over the socket.
    unknown = remote.run("send", "nobody", "x")
    assert one_line_error(unknown) == one_line_error(system.cli("send", "nobody", "x"))
    history = remote.run("history", "echo", "--json")
    assert history.returncode == 0, history.stderr
    assert [run["prompt"] for run in json.loads(history.stdout)["runs"]] == ["hello", "hi", "hi"]

    # A request is at most the NATS server's max_payload (1 MiB here): refused by the client, in one line.
    big = subprocess.run(
        remote.args("send", "echo", "-"), input="x" * 1_100_000, capture_output=True, text=True, env=remote.env
    )
    assert "request too large" in one_line_error(big)

    missing = Remote(nats_server.url, "nosuchsystem").run("status")
    assert "no system 'nosuchsystem' answers" in one_line_error(missing)
    no_name = remote.run("status", nats=False)  # no socket here, and no --nats: nothing to talk to
    assert one_line_error(no_name).startswith("Error: no system is running")


def test_watch_and_stop_over_nats(systems: Systems, nats_server: NatsServer) -> None:
    system = systems.start(config("remote2", f"{{url: '{nats_server.url}'}}"))
    remote = Remote(nats_server.url, "remote2")
    watch = remote.popen("watch", "--json")
    try:
        assert watch.stdout is not None
        first = json.loads(watch.stdout.readline())
        assert first["event"] == "subscribed" and first["status"]["name"] == "remote2"
        sent = remote.run("send", "upper", "shout")
        assert sent.returncode == 0 and sent.stdout.strip() == "SHOUT", sent.stderr
        events = []
        while not any(e.get("event") == "run_finished" and e.get("agent") == "upper" for e in events):
            events.append(json.loads(watch.stdout.readline()))
        assert any(e.get("event") == "run_started" and e.get("prompt") == "shout" for e in events)

        stopped = remote.run("stop", timeout=90)
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stdout.strip() == "stopped"
        assert system.process is not None
        assert system.process.wait(30) == 0
        # The watch ends by itself once the system is gone, as over the socket.
        rest = [json.loads(line) for line in watch.stdout]
        assert watch.wait(30) == 0
        assert "system_stopping" in [e.get("event") for e in rest]
    finally:
        if watch.poll() is None:
            watch.send_signal(signal.SIGKILL)
            watch.wait()


def test_a_vanished_subscriber_is_dropped(systems: Systems, nats_server: NatsServer) -> None:
    """A `watch` killed with SIGKILL leaves no subscription behind: the supervisor's probe finds it gone."""
    system = systems.start(config("remote3", f"{{url: '{nats_server.url}'}}"))
    remote = Remote(nats_server.url, "remote3")
    watch = remote.popen("watch", "--json")
    assert watch.stdout is not None
    assert json.loads(watch.stdout.readline())["event"] == "subscribed"
    watch.send_signal(signal.SIGKILL)
    watch.wait()
    deadline = time.monotonic() + 60
    # `logs` would not do: the supervisor's log says it (the probe runs every few seconds).
    while "dropping a NATS subscriber (gone)" not in system.log_text():
        assert time.monotonic() < deadline, system.log_text()
        time.sleep(0.2)
    assert remote.run("status").returncode == 0


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["/usr/bin/openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key)."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=llmling test CA",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=folder)  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "server.key", "-out", "server.csr", cwd=folder)  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.ext", "-out", "server.pem", cwd=folder)  # fmt: skip
    return folder / "ca.pem", folder / "server.pem", folder / "server.key"


def test_user_password_refuses_a_client_without_them(systems: Systems, tmp_path: Path) -> None:
    with NatsServer(tmp_path / "nats", user="llm", password="s3cret-pass") as server:
        systems.start(
            config("authed", f"{{url: '{server.url}', user: llm, password_env: SYS_NATS_PASS}}"),
            env={"SYS_NATS_PASS": "s3cret-pass"},
        )
        bare = Remote(server.url, "authed").run("status")
        line = one_line_error(bare)
        assert "authorization violation" in line and server.url in line
        wrong = Remote(server.url, "authed", {"NATS_PASSWORD": "nope"}).run("status", "--nats-user", "llm")
        assert "authorization violation" in one_line_error(wrong)
        assert "nope" not in wrong.stderr
        no_password = Remote(server.url, "authed").run("status", "--nats-user", "llm")
        assert "$NATS_PASSWORD" in one_line_error(no_password)

        good = Remote(server.url, "authed", {"NATS_PASSWORD": "s3cret-pass"})
        sent = good.run("send", "echo", "with a password", "--nats-user", "llm")
        assert sent.returncode == 0 and sent.stdout.strip() == "echo: with a password", sent.stderr
        assert "s3cret-pass" not in sent.stdout + sent.stderr


def test_token_refuses_a_client_without_it(systems: Systems, tmp_path: Path) -> None:
    with NatsServer(tmp_path / "nats", token="t0ken-value") as server:
        system = systems.start(
            config("tokened", f"{{url: '{server.url}', token_env: SYS_NATS_TOKEN}}"),
            env={"SYS_NATS_TOKEN": "t0ken-value"},
        )
        assert "authorization violation" in one_line_error(Remote(server.url, "tokened").run("status"))
        good = Remote(server.url, "tokened", {"NATS_TOKEN": "t0ken-value"})
        status = good.run("status", "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["name"] == "tokened"
        assert "t0ken-value" not in system.log_text()


def test_tls_needs_the_ca(systems: Systems, tmp_path: Path) -> None:
    ca, cert, key = make_certificates(tmp_path)
    with NatsServer(tmp_path / "nats", tls=(str(cert), str(key))) as server:
        systems.start(config("secure", f"{{url: '{server.url}', tls: {{ca_file: '{ca}'}}}}"))
        untrusted = Remote(server.url, "secure").run("status")
        line = one_line_error(untrusted)
        assert server.url in line and "certificate" in line.lower(), line
        trusted = Remote(server.url, "secure").run("send", "echo", "over tls", "--nats-ca", str(ca))
        assert trusted.returncode == 0 and trusted.stdout.strip() == "echo: over tls", trusted.stderr


def test_an_unreachable_nats_fails_the_start_with_one_line(systems: Systems) -> None:
    from llmling.testing import free_port

    url = f"nats://127.0.0.1:{free_port()}"
    system: SystemProcess = systems.make(config("nonats", f"{{url: '{url}', connect_timeout: 1}}"))
    assert system.run() != 0
    assert f"cannot connect to NATS at {url}" in system.log_text()
    assert "Traceback" not in system.log_text()


async def test_bad_requests_and_the_subscriber_cap(systems: Systems, nats_server: NatsServer) -> None:
    """Over NATS as over the socket: a bad frame or request gets an `error` naming the problem, the long-lived
    requests are bounded, and none of it disturbs the next request."""
    from llmling.ipc.frames import decode, encode_body
    from llmling.ipc.nats_connect import NatsOptions, connect
    from llmling.supervisor.nats_control import MAX_SUBSCRIBERS

    systems.start(config("remote4", f"{{url: '{nats_server.url}'}}"))
    subject = "llmling.remote4.control"
    nats = await connect(NatsOptions(nats_server.url), reconnect=False)
    try:

        async def ask(body: bytes) -> dict[str, object]:
            return decode((await nats.request(subject, body, timeout=30)).data)

        bad = await ask(b"not json")
        assert bad["t"] == "error" and str(bad["error"]).startswith("protocol error: frame is not valid JSON")
        unknown = await ask(encode_body({"t": "nope", "id": "r1"}))
        assert unknown == {"t": "error", "re": "r1", "error": "field 't': unknown request type 'nope'"}
        no_id = await ask(encode_body({"t": "status"}))
        assert no_id == {"t": "error", "error": "field 'id' must be of type str"}

        inboxes = []
        for number in range(MAX_SUBSCRIBERS):
            inbox = nats.new_inbox()
            subscription = await nats.subscribe(inbox)
            await nats.publish(subject, encode_body({"t": "subscribe", "id": f"s{number}"}), reply=inbox)
            first = decode((await subscription.next_msg(timeout=30)).data)
            assert first["t"] == "chunk" and first["event"]["event"] == "subscribed", first
            inboxes.append(subscription)
        over = await ask(encode_body({"t": "subscribe", "id": "one-too-many"}))
        assert over == {
            "t": "error",
            "re": "one-too-many",
            "error": f"too many NATS subscribers: the limit is {MAX_SUBSCRIBERS}",
        }
        status = await ask(encode_body({"t": "status", "id": "after"}))
        assert status["t"] == "status" and status["re"] == "after" and status["name"] == "remote4"

        # These subscribers never answer the liveness probe (too slow, or gone): each is dropped, and told.
        for subscription in inboxes:
            while True:
                msg = await subscription.next_msg(timeout=30)
                frame = decode(msg.data) if msg.data else {}
                if frame.get("t") == "error":
                    assert frame["error"] == "dropped: no answer to the liveness probe within 5 s"
                    break
        again = await ask(encode_body({"t": "subscribe", "id": "room-again"}))
        assert again["t"] == "chunk" and again["event"]["event"] == "subscribed"
    finally:
        await nats.close()


class ConfiguredNats(NatsServer):
    """A NatsServer that also reads a server config file (for users with permissions)."""

    def __init__(self, store_dir: Path, config_file: Path) -> None:
        super().__init__(store_dir)
        self.config_file = config_file

    def command(self) -> list[str]:
        return [*super().command(), "-c", str(self.config_file)]


def test_nats_permissions_decide_who_may_control(systems: Systems, tmp_path: Path) -> None:
    """The README's example: the supervisor may do everything, `ops` may control the system, `guest` may not."""
    config_file = tmp_path / "auth.conf"
    config_file.write_text(
        """
        authorization {
          users = [
            {user: supervisor, password: sup-pass}
            {user: ops, password: ops-pass,
             permissions: {publish: ["llmling.perm.control"], subscribe: ["_INBOX.>"], allow_responses: true}}
            {user: guest, password: guest-pass, permissions: {publish: {deny: ">"}, subscribe: ["_INBOX.>"]}}
          ]
        }
        """
    )
    with ConfiguredNats(tmp_path / "nats", config_file) as server:
        systems.start(
            config("perm", f"{{url: '{server.url}', user: supervisor, password_env: SUP_PASS}}"),
            env={"SUP_PASS": "sup-pass"},
        )
        ops = Remote(server.url, "perm", {"NATS_PASSWORD": "ops-pass"})
        sent = ops.run("send", "echo", "allowed", "--nats-user", "ops")
        assert sent.returncode == 0 and sent.stdout.strip() == "echo: allowed", sent.stderr
        guest = Remote(server.url, "perm", {"NATS_PASSWORD": "guest-pass"}).run("status", "--nats-user", "guest")
        line = one_line_error(guest)
        assert server.url in line and 'permissions violation for publish to "llmling.perm.control"' in line.lower()


def test_the_control_comes_back_after_a_nats_restart(systems: Systems, tmp_path: Path) -> None:
    """The supervisor reconnects and subscribes again: remote clients are served once NATS is back."""
    with NatsServer(tmp_path / "nats") as server:
        systems.start(config("comeback", f"{{url: '{server.url}'}}"))
        remote = Remote(server.url, "comeback")
        assert remote.run("status").returncode == 0
        server.restart(kill=True)
        deadline = time.monotonic() + 60
        while (sent := remote.run("send", "echo", "again")).returncode != 0:
            assert time.monotonic() < deadline, sent.stderr
            assert "Traceback" not in sent.stderr
        assert sent.stdout.strip() == "echo: again"
