"""The default system of `make up`: two agents on the embedded model, served by llama.cpp, through litellm."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from llmling.testing import SystemProcess, wait_gone
from tests.conftest import short_tempdir

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "agents.yml"


def test_default_config_answers_from_the_embedded_model(tmp_path: Path) -> None:
    socket_dir = short_tempdir()
    system = SystemProcess(DEFAULT_CONFIG, socket_dir / "s.sock", tmp_path / "up.log")
    try:
        status = system.start(timeout=120)
        assert [agent["name"] for agent in status["agents"]] == ["analyzer", "summarizer"]
        model = status["models"][0]
        assert model["name"] == "smollm2"
        assert model["api_base"].startswith("http://127.0.0.1:")

        plain = system.cli("send", "analyzer", "Why is the sky blue?", timeout=120)
        assert plain.returncode == 0, plain.stderr
        assert len(plain.stdout.split()) >= 3  # a real, streamed reply from the model

        waited = system.cli("send", "--wait", "--json", "analyzer", "What is Python?", timeout=180)
        assert waited.returncode == 0, waited.stderr
        reply = json.loads(waited.stdout)
        assert reply["agent"] == "analyzer"
        assert reply["content"].strip()
        [summary] = reply["downstream"]
        assert summary["agent"] == "summarizer"
        assert summary["parent_id"] == reply["id"]
        assert summary["content"].strip()
    finally:
        code = system.stop()
        left = wait_gone(system.tag, 10)
        shutil.rmtree(socket_dir, ignore_errors=True)
    assert code == 0, system.log_text()
    assert left == []  # the llama.cpp server, the forkserver and the agents are all gone
