"""Boot a real systemd in a container (`systemd-nspawn --boot`) on an overlay of `/`, run one check script
inside it as a oneshot unit, and collect what it wrote. Root only; used by `make test-systemd`, never by
`make test`.

The container sees the host's files through the overlay (the checkout, the interpreter, the venv) and writes
only to the overlay's upper folder, which is removed afterwards. The check script powers the container off
when it is done, so the boot ends by itself; a time limit ends it otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CHECK_UNIT = """\
[Unit]
Description=llmling live systemd checks
After=multi-user.target

[Service]
Type=oneshot
Environment=PYTHONUNBUFFERED=1
{environment}ExecStart={python} {script} {results}
ExecStopPost=/bin/systemctl --no-block poweroff
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
"""


def ensure_nspawn() -> str:
    """The path of systemd-nspawn, installed with apt when missing (root only)."""
    found = shutil.which("systemd-nspawn")
    if found:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "systemd-container"], check=True, env=env, timeout=900)
    found = shutil.which("systemd-nspawn")
    if not found:
        raise RuntimeError("systemd-container installed, but systemd-nspawn is not on PATH")
    return found


@dataclass
class Container:
    """An overlay of `/` and the paths a test fills before `boot()`."""

    root: Path
    upper: Path
    log: Path

    def path(self, inside: str) -> Path:
        """A path inside the container, as seen from the host (writes land in the overlay)."""
        return self.root / inside.lstrip("/")

    def write(self, inside: str, text: str, mode: int = 0o644) -> None:
        target = self.path(inside)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def boot(
        self, script: Path, results: Path, binds: list[Path], env: dict[str, str], timeout: float
    ) -> dict[str, object]:
        """Boot, run `script` (a Python file, with this interpreter) as a oneshot unit with `env`, return the
        JSON it wrote to `results`, a path in one of the `binds` (each bound at the same path inside), so the
        host reads the very file the container wrote."""
        environment = "".join(f"Environment={key}={value}\n" for key, value in env.items())
        unit = CHECK_UNIT.format(python=sys.executable, script=script, results=results, environment=environment)
        self.write("/etc/systemd/system/llmling-live-checks.service", unit)
        wants = self.path("/etc/systemd/system/multi-user.target.wants")
        wants.mkdir(parents=True, exist_ok=True)
        link = wants / "llmling-live-checks.service"
        if not link.is_symlink():
            link.symlink_to("/etc/systemd/system/llmling-live-checks.service")
        command = [
            ensure_nspawn(),
            "--boot",
            "--register=no",
            "--keep-unit",
            "--console=pipe",
            "-q",
            "-D",
            str(self.root),
        ]
        for path in binds:
            command.append(f"--bind={path}")
        with self.log.open("wb") as log:
            try:
                subprocess.run(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    timeout=timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise AssertionError(
                    f"the container did not power off within {timeout} s; see {self.log}"
                ) from exc
        written = results
        if not written.exists():
            raise AssertionError(f"the checks wrote no results; console:\n{self.log.read_text()[-4000:]}")
        return json.loads(written.read_text())


@contextmanager
def overlay_of_root() -> Iterator[Container]:
    """Mount an overlay of `/` under a temporary folder; unmount and remove it afterwards."""
    base = Path(tempfile.mkdtemp(prefix="llmling-nspawn-"))
    root, upper, work = base / "root", base / "upper", base / "work"
    for folder in (root, upper, work):
        folder.mkdir()
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir=/,upperdir={upper},workdir={work}", str(root)],
        check=True,
        timeout=60,
    )
    try:
        yield Container(root=root, upper=upper, log=base / "console.log")
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False, timeout=60)
        if os.environ.get("LLMLING_KEEP_NSPAWN"):
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
