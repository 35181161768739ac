"""The generated unit under a real systemd: booted with `systemd-nspawn --boot` on an overlay of `/`.

Root only and slow (a container boot): `make test-systemd` runs it (CI calls that as root); `make test`
skips it with that reason.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from llmling.testing import llmling_command
from tests.live.nspawn import overlay_of_root

pytestmark = pytest.mark.skipif(
    os.environ.get("LLMLING_LIVE_SYSTEMD") != "1" or os.geteuid() != 0,
    reason="boots a real systemd in a container: root only, run by `make test-systemd`",
)

CONFIG = """\
name: {name}
shutdown_timeout: 5
agents:
  analyzer:
    callback: cb:upper
"""

CALLBACKS = """\
def upper(prompt: str) -> str:
    return prompt.upper()


def shout(prompt: str) -> str:
    return prompt.upper() + "!"
"""


def test_unit_under_real_systemd(tmp_path_factory: pytest.TempPathFactory) -> None:
    name = f"live{uuid.uuid4().hex[:6]}"
    # Outside /tmp: the unit then keeps PrivateTmp=yes, as a real install would.
    folder = Path("/srv") / f"llmling-{name}"
    folder.mkdir(parents=True)
    try:
        (folder / "agents.yml").write_text(CONFIG.format(name=name))
        (folder / "cb.py").write_text(CALLBACKS)
        unit = subprocess.run(
            [*llmling_command(), "systemd-unit", str(folder / "agents.yml")],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        bin_dir = Path(llmling_command()[0]).parent
        checkout = Path(__file__).resolve().parents[2]
        with overlay_of_root() as container:
            container.write(f"/etc/systemd/system/llmling-{name}.service", unit)
            results = container.boot(
                checkout / "tests" / "live" / "systemd_checks.py",
                folder / "results.json",
                binds=[folder, checkout],
                env={
                    "LLMLING_LIVE_UNIT": f"llmling-{name}",
                    "LLMLING_LIVE_NAME": name,
                    "LLMLING_LIVE_BIN": str(bin_dir / "llmling"),
                    **({"LLMLING_LIVE_RELOAD": "1"} if "ExecReload=" in unit else {}),
                },
                timeout=600,
            )
        failed = [c for c in results["checks"] if not c["ok"]]  # type: ignore[union-attr]
        names = [c["name"] for c in results["checks"]]  # type: ignore[union-attr]
        assert "stop is Result=success" in names, results
        assert not failed, "\n".join(f"{c['name']}: {c['detail']}" for c in failed)
    finally:
        subprocess.run(["rm", "-rf", str(folder)], check=False)
