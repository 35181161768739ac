"""Runs inside the booted container (as a oneshot unit): drives the generated llmling unit with systemctl and
writes what it saw as JSON to the path given as the first argument. Every check is recorded, passed or not, so
the host reports all of them at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

UNIT = os.environ.get("LLMLING_LIVE_UNIT", "llmling-live")
CHECKS: list[dict[str, object]] = []


def sh(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def show(*props: str) -> dict[str, str]:
    out = sh("systemctl", "show", UNIT, *(f"-p{p}" for p in props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def wait_for(condition: Callable[[], bool], timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def check(name: str, ok: bool, detail: object = "") -> bool:
    CHECKS.append({"name": name, "ok": bool(ok), "detail": str(detail)[-2000:]})
    return ok


def main(results: Path) -> None:
    config = results.parent / "agents.yml"
    llmling = [os.environ["LLMLING_LIVE_BIN"]]
    socket = f"/run/llmling/{os.environ['LLMLING_LIVE_NAME']}.sock"

    started = sh("systemctl", "start", UNIT, timeout=300)
    state = show("ActiveState", "SubState", "StatusText", "MainPID")
    check(
        "start returns after READY",
        started.returncode == 0 and state["ActiveState"] == "active",
        f"{started.stderr} {state}",
    )
    check("STATUS text", state.get("StatusText", "").startswith("running"), state)

    sent = sh(*llmling, "send", "--socket", socket, "analyzer", "hello")
    check("send through /run/llmling", sent.returncode == 0 and "HELLO" in sent.stdout, sent.stdout + sent.stderr)

    state_home = Path("/var/lib/llmling")
    found = wait_for(lambda: any(state_home.rglob("history.db")), 30)
    check("history under the state directory", found, sorted(str(p) for p in state_home.rglob("*")))
    home = Path.home() / ".local/state/llmling"
    check("nothing written to the read-only home", not list(home.glob(f"{os.environ['LLMLING_LIVE_NAME']}*")))

    check(
        "watchdog pings arrive",
        wait_for(lambda: show("WatchdogTimestampMonotonic").get("WatchdogTimestampMonotonic", "0") != "0", 30),
        show("WatchdogTimestampMonotonic", "WatchdogUSec"),
    )

    if os.environ.get("LLMLING_LIVE_RELOAD"):
        changed = config.read_text().replace("cb:upper", "cb:shout")
        config.write_text(changed)
        reloaded = sh("systemctl", "reload", UNIT, timeout=120)
        after = sh(*llmling, "send", "--socket", socket, "analyzer", "hello")
        check(
            "systemctl reload applies a config change",
            reloaded.returncode == 0 and "HELLO!" in after.stdout,
            reloaded.stderr + after.stdout + after.stderr,
        )

    cursor = sh("journalctl", "-n", "0", "--show-cursor", "-q").stdout.strip().removeprefix("-- cursor: ")
    stopped = sh("systemctl", "stop", UNIT, timeout=300)
    result = show("Result", "ActiveState")
    check("stop is Result=success", stopped.returncode == 0 and result["Result"] == "success", result)
    journal = sh("journalctl", "--no-pager", "-o", "cat", f"--after-cursor={cursor}", "-u", UNIT).stdout
    killed = [line for line in journal.splitlines() if "SIGKILL" in line]
    check("nothing left for systemd to SIGKILL on stop", not killed, "\n".join(killed))

    sh("systemctl", "start", UNIT, timeout=300)
    before = show("MainPID", "NRestarts")
    os.kill(int(before["MainPID"]), signal.SIGKILL)
    restarted = wait_for(
        lambda: (
            (s := show("MainPID", "NRestarts", "ActiveState"))["ActiveState"] == "active"
            and s["MainPID"] not in ("0", before["MainPID"])
            and int(s["NRestarts"]) > int(before["NRestarts"])
        ),
        120,
    )
    again = sh(*llmling, "send", "--socket", socket, "analyzer", "again")
    check(
        "SIGKILL of the main PID restarts the unit",
        restarted and again.returncode == 0,
        f"{before} {show('MainPID', 'NRestarts', 'ActiveState')} {again.stderr}",
    )
    sh("systemctl", "stop", UNIT, timeout=300)


if __name__ == "__main__":
    out = Path(sys.argv[1])
    try:
        main(out)
    except Exception as exc:  # recorded as a failed check: the host reports it
        check("the check script ran to the end", False, f"{type(exc).__name__}: {exc}")
    out.write_text(json.dumps({"checks": CHECKS}, indent=1))
