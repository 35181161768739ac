"""systemd: the notify protocol against a real datagram socket, and the generated unit (structure, and
`systemd-analyze verify` where that tool exists)."""

from __future__ import annotations

import configparser
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from llmling.supervisor.notify import SystemdNotifier
from llmling.testing import llmling_command

REPO = Path(__file__).resolve().parents[1]
ECHO = """
shutdown_timeout: 7
agents:
  analyzer:
    callback: cb:echo
  summarizer:
    callback: cb:upper
"""


def receive_all(sock: socket.socket, until: str, timeout: float = 30.0) -> list[str]:
    """Datagrams (one message each) until one contains `until`."""
    messages: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(4096)
        except TimeoutError:
            break
        messages.append(data.decode())
        if until in messages[-1]:
            return messages
    raise AssertionError(f"no {until!r} within {timeout} s; got {messages}")


def test_notify_protocol(systems, short_dir: Path) -> None:  # type: ignore[no-untyped-def]
    path = short_dir / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        system = systems.start(ECHO, env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"})
        got = receive_all(sock, "READY=1")
        ready = got[-1].splitlines()
        assert "READY=1" in ready
        assert any(line.startswith("STATUS=running: 2/2 agents ready") for line in ready), ready
        assert any(line.startswith("STATUS=starting") for message in got for line in message.splitlines())

        # WATCHDOG=1 every 0.2 s (half of WATCHDOG_USEC), from the supervisor's loop.
        began = time.monotonic()
        watchdogs = 0
        while watchdogs < 4:
            watchdogs += receive_all(sock, "WATCHDOG=1", timeout=5)[-1] == "WATCHDOG=1"
        assert time.monotonic() - began < 3

        # The notify variables are not inherited by the agents.
        for agent in system.status()["agents"]:
            environ = Path(f"/proc/{agent['pid']}/environ").read_bytes().split(b"\0")
            assert not any(item.startswith((b"NOTIFY_SOCKET=", b"WATCHDOG_")) for item in environ)

        system.process.send_signal(signal.SIGTERM)
        stopping = receive_all(sock, "STOPPING=1")
        assert "STOPPING=1" in stopping[-1].splitlines()
        assert system.process.wait(30) == 0
        assert not any("RELOADING=1" in message for message in got + stopping)


def test_notify_abstract_socket(systems) -> None:  # type: ignore[no-untyped-def]
    name = f"llmling-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        systems.start(ECHO, env={"NOTIFY_SOCKET": "@" + name})
        assert "READY=1" in receive_all(sock, "READY=1")[-1]


def test_notifier_from_env() -> None:
    assert SystemdNotifier.from_env({}) is None
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}
    notifier = SystemdNotifier.from_env(env)
    assert notifier is not None and notifier.watchdog_interval == 1.5 and env == {}
    other = SystemdNotifier.from_env({"NOTIFY_SOCKET": "@abc", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"})
    assert other is not None and other.address == "\0abc" and other.watchdog_interval is None  # not our pid
    assert SystemdNotifier.from_env({"NOTIFY_SOCKET": "relative"}) is None


# -- the unit -------------------------------------------------------------------------------------------------
def unit_text(config: Path, *extra: str) -> str:
    result = subprocess.run(
        [*llmling_command(), "systemd-unit", str(config), *extra], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def parse_unit(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, comment_prefixes=("#", ";"), interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def check_structure(unit: configparser.RawConfigParser, shutdown_timeout: float) -> None:
    assert unit.sections() == ["Unit", "Service", "Install"]
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["KillMode"] == "mixed"
    assert service["Restart"] == "on-failure"
    assert service["RuntimeDirectory"] == "llmling"
    assert int(service["TimeoutStopSec"]) > shutdown_timeout + 5
    assert int(service["WatchdogSec"]) >= 2
    assert service["NoNewPrivileges"] == "yes"
    executable, *args = service["ExecStart"].split()
    assert Path(executable).is_absolute()
    assert args[-2] == "up" and Path(args[-1]).is_absolute()
    reload_executable, *reload_args = service["ExecReload"].split()
    assert reload_executable == executable and reload_args == ["reload"]


def test_unit_structure(tmp_path: Path) -> None:
    config = tmp_path / "agents.yml"
    config.write_text(ECHO.replace("shutdown_timeout: 7", "name: demo\nshutdown_timeout: 7"))
    text = unit_text(config)
    unit = parse_unit(text)
    check_structure(unit, 7)
    service = unit["Service"]
    executable, *args = service["ExecStart"].split()
    assert os.access(executable, os.X_OK) and args == ["up", str(config)]
    assert service["ProtectSystem"] == "strict"
    assert str(tmp_path) in service["ReadWritePaths"]
    assert service["WorkingDirectory"] == str(tmp_path)
    environment = [
        line.removeprefix("Environment=") for line in text.splitlines() if line.startswith("Environment=")
    ]
    assert "LLMLING_SOCKET=%t/llmling/demo.sock" in environment
    # History and the journal in the unit's state directory, not the (read-only) home.
    assert "XDG_STATE_HOME=%S" in environment
    assert unit["Install"]["WantedBy"] == "multi-user.target"

    user = parse_unit(unit_text(config, "--user"))
    check_structure(user, 7)
    assert user["Install"]["WantedBy"] == "default.target"
    assert "User" not in user["Service"] and "ProtectSystem" not in user["Service"]


def test_unit_quotes_paths(tmp_path: Path) -> None:
    folder = tmp_path / "my 100% agents"
    folder.mkdir()
    config = folder / "agents.yml"
    config.write_text(ECHO)
    service = parse_unit(unit_text(config))["Service"]
    assert service["ExecStart"].endswith(f' up "{folder}/agents.yml"'.replace("%", "%%"))


def test_shipped_example_unit() -> None:
    unit = parse_unit((REPO / "configs" / "llmling.service").read_text())
    check_structure(unit, 10)
    assert unit["Service"]["ExecStart"].endswith("up /opt/llmling/configs/agents.yml")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
@pytest.mark.parametrize("user", [False, True])
def test_systemd_analyze_verify(tmp_path: Path, user: bool) -> None:
    config = tmp_path / "agents.yml"
    config.write_text(ECHO)
    unit = tmp_path / "llmling-test.service"
    unit.write_text(unit_text(config, *(["--user"] if user else [])))
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    command = ["systemd-analyze", *(["--user"] if user else []), "verify", "--man=no", str(unit)]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=60, env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    )
    problems = [line for line in (result.stdout + result.stderr).splitlines() if unit.name in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr
