"""`llmling logs`: an agent's loguru records and everything written to its fd 1/2 (print, sys.stderr,
os.write, C code) reach the supervisor tagged with the agent's name: its terminal, a bounded ring, rotating files
and followers."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO

import pytest

from llmling.supervisor import logs as log_service
from llmling.testing import SystemProcess, llmling_command
from tests._automation import wait_until
from tests.conftest import Systems

TALKER = """
import ctypes
import os
import sys

from loguru import logger


def chat(prompt):
    print(f"printed {prompt}")
    sys.stderr.write(f"stderr {prompt}\\n")
    os.write(1, f"fd1 {prompt}\\n".encode())
    ctypes.CDLL(None).puts(f"C puts {prompt}".encode())
    logger.warning("logged {}", prompt)
    return "ok"


def flood(prompt):
    for index in range(int(prompt)):
        print(f"line {index}")
    return "flooded"
"""

CONFIG = """
state_dir: state
agents:
  talker: {callback: 'talker:chat'}
  quiet: {callback: 'talker:chat'}
  flooder: {callback: 'talker:flood'}
"""


@pytest.fixture(scope="module")
def system(module_systems: Systems) -> SystemProcess:
    return module_systems.start(CONFIG, modules={"talker": TALKER})


def send(system: SystemProcess, agent: str, prompt: str) -> None:
    reply = system.request({"t": "send", "agent": agent, "prompt": prompt}, timeout=60)
    assert reply["t"] == "result", reply


def logs_json(system: SystemProcess, *args: str) -> list[dict]:
    done = system.cli("logs", "--json", *args)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_every_kind_of_output_reaches_the_supervisor(system: SystemProcess) -> None:
    send(system, "talker", "one")
    expected = {
        ("stdout", "printed one"),
        ("stderr", "stderr one"),
        ("stdout", "fd1 one"),
        ("stdout", "C puts one"),
        ("log", "logged one"),
    }

    def seen() -> list[dict]:
        lines = logs_json(system, "talker")
        return lines if expected <= {(line["stream"], line["text"]) for line in lines} else []

    lines = wait_until(seen, 30, "the talker's five lines")
    assert all(line["agent"] == "talker" for line in lines)
    logged = next(line for line in lines if line["stream"] == "log")
    assert logged["level"] == "WARNING" and isinstance(logged["ts"], float)
    # Only the talker's lines, and up's terminal names the agent.
    assert not [line for line in logs_json(system) if line["agent"] == "quiet"]
    log = system.log_text()
    assert "[talker] stdout: printed one" in log and "[talker] stdout: C puts one" in log
    assert "[talker] logged one" in log
    # And the rotating file under the state folder, one JSON object a line.
    path = system.config.parent / "state" / "logs" / "talker.log"
    on_disk = [json.loads(line) for line in path.read_text().splitlines()]
    assert ("stdout", "printed one") in {(line["stream"], line["text"]) for line in on_disk}

    human = system.cli("logs", "talker", "-n", "5")
    assert human.returncode == 0, human.stderr
    assert any(line.split()[1:4] == ["talker", "stdout", "printed"] for line in human.stdout.splitlines())


def test_follow_prints_new_lines_until_interrupted(system: SystemProcess) -> None:
    follower = subprocess.Popen(
        [*llmling_command(), "logs", "quiet", "-f", "-n", "0", "--json", "--socket", str(system.socket)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=system.env,
    )
    try:
        got: list[dict] = []
        assert follower.stdout is not None

        def read(stream: IO[str]) -> None:
            for line in stream:
                got.append(json.loads(line))

        threading.Thread(target=read, args=(follower.stdout,), daemon=True).start()
        sent_at = [0.0]

        def seen() -> list[dict]:
            # Send until the follower, subscribed some time after it started, prints a line (once a second).
            if not got and time.monotonic() - sent_at[0] > 1.0:
                sent_at[0] = time.monotonic()
                send(system, "quiet", "followed")
            return got

        wait_until(seen, 30, "a followed line")
        wait_until(lambda: "printed followed" in {line["text"] for line in got}, 30, "the printed line")
        assert {line["agent"] for line in got} == {"quiet"}  # lines of other agents never show
        follower.send_signal(signal.SIGINT)
        assert follower.wait(10) == 0
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait(10)


def test_ring_is_bounded_and_every_line_is_counted(system: SystemProcess) -> None:
    count = log_service.RING_LINES * 4
    send(system, "flooder", str(count))

    def accounted() -> dict:
        reply = system.request({"t": "logs", "agent": "flooder", "lines": 0})
        assert reply["t"] == "ok", reply
        return reply if reply["received"]["flooder"] + reply["dropped"]["flooder"] >= count else {}

    reply = wait_until(accounted, 60, "every flooded line received or counted as dropped")
    assert reply["received"]["flooder"] + reply["dropped"]["flooder"] == count  # none lost, none twice
    lines = logs_json(system, "flooder", "-n", str(log_service.MAX_LINES))
    assert len(lines) == min(log_service.RING_LINES, reply["received"]["flooder"])
    numbers = [int(line["text"].split()[1]) for line in lines]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    send(system, "talker", "after the flood")  # the system keeps serving
    bad = system.cli("logs", "flooder", "-n", str(log_service.MAX_LINES + 1))
    assert bad.returncode == 1 and "between 0 and" in bad.stderr


def test_rotating_file_keeps_n_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log_service, "FILE_BYTES", 1000)
    file = log_service.RotatingFile(tmp_path / "logs" / "a.log")
    for index in range(100):
        file.write([json.dumps({"text": f"line {index:03d}", "pad": "x" * 80}) + "\n"])
    file.close()
    names = sorted(path.name for path in (tmp_path / "logs").iterdir())
    assert names == ["a.log", "a.log.1", "a.log.2", "a.log.3"]
    assert all(path.stat().st_size <= 1000 + 120 for path in (tmp_path / "logs").iterdir())
    newest = (tmp_path / "logs" / "a.log").read_text().splitlines()
    assert json.loads(newest[-1])["text"] == "line 099"


def test_log_files_are_read_when_no_system_runs(systems: Systems, tmp_path: Path) -> None:
    system = systems.start("agents:\n  talker: {callback: 'talker:chat'}\n", modules={"talker": TALKER})
    send(system, "talker", "before the stop")
    wait_until(lambda: "printed before the stop" in system.log_text(), 30, "the printed line")
    assert system.stop() == 0
    env = {**system.env, "XDG_RUNTIME_DIR": str(tmp_path / "no-runtime")}

    def offline(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*llmling_command(), "logs", *args], capture_output=True, text=True, timeout=60, env=env
        )

    for args in (["talker", "--json"], ["--config", str(system.config), "--json"]):
        done = offline(*args)
        assert done.returncode == 0, done.stderr
        lines = [json.loads(line) for line in done.stdout.splitlines()]
        assert ("stdout", "printed before the stop") in {(line["stream"], line["text"]) for line in lines}
        assert {line["agent"] for line in lines} == {"talker"}
    done = offline("-f")
    assert done.returncode == 1 and "--follow needs" in done.stderr
    done = offline("talkr")
    assert done.returncode == 1 and "did you mean 'talker'?" in done.stderr
