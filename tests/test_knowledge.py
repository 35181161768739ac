"""Functional: knowledge sources (files and globs, inline prompts, URLs) loaded at init as concurrent components,
`parallel_init: false` serialising them, and a failing source failing only its agent's start.

URLs come from a local aiohttp server that answers each document after a known delay, so the init time says
whether the sources loaded one after another or together.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from llmling.config import load_config, parse_config
from llmling.errors import ConfigError
from llmling.supervisor.system import Supervisor
from llmling.testing import ScriptedLLM
from tests.conftest import Systems

DELAY = 0.5


class DocServer:
    """`GET /doc/<name>` answers `document <name>` after `delay` seconds; anything else is a 404.

    `async with` serves on the current loop; `with` serves from a thread of its own.
    """

    def __init__(self, delay: float = DELAY) -> None:
        self.delay = delay
        self.url = ""
        self.hits: list[str] = []
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _doc(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.hits.append(name)
        await asyncio.sleep(self.delay)
        return web.Response(text=f"document {name}")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/doc/{name}", self._doc)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(self._runner, sock).start()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> DocServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __enter__(self) -> DocServer:
        started = threading.Event()

        def serve() -> None:
            loop = self._loop = asyncio.new_event_loop()
            loop.run_until_complete(self.start())
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.close())
            loop.close()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        started.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)


class Events:
    """Every supervisor event with the time it arrived."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, dict[str, Any]]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.seen.append((time.perf_counter(), event))

    def init_time(self, agent: str) -> float:
        """Seconds from the first component starting to the last one ready (the agent's init)."""
        times = [
            (at, event["state"])
            for at, event in self.seen
            if event.get("event") == "component" and event.get("agent") == agent
        ]
        starts = [at for at, state in times if state == "starting"]
        readies = [at for at, state in times if state == "ready"]
        assert len(starts) == len(readies), times
        return max(readies) - min(starts)

    def components(self, agent: str) -> list[tuple[str, str]]:
        return [
            (event["component"], event["state"])
            for _, event in self.seen
            if event.get("event") == "component" and event.get("agent") == agent
        ]


def write_config(folder: Path, text: str) -> Path:
    path = folder / "system.yml"
    path.write_text(text)
    return path


# -- the config -----------------------------------------------------------------------------------------------
def test_knowledge_and_capability_keys_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"agents\.cb: tools, knowledge: only for agents with a 'model'"):
        parse_config("agents:\n  cb:\n    callback: m:f\n    tools: [m:g]\n    knowledge: {prompts: [x]}\n")
    with pytest.raises(ConfigError, match="knowledge resource 'notes://x' needs an MCP server"):
        parse_config("agents:\n  a:\n    model: m\n    knowledge: {resources: ['notes://x']}\n")
    with pytest.raises(ConfigError, match=r"system.yml|<config>:5: agents\.a\.knowledge\.urlz: unknown key"):
        parse_config("agents:\n  a:\n    model: m\n    knowledge:\n      urlz: [x]\n")
    config = parse_config(
        "agents:\n  a:\n    model: m\n    parallel_init: false\n"
        "    mcp_servers: ['python srv.py --port 1', {url: 'http://h:1/mcp'}]\n"
        "    knowledge: {paths: [docs/*.md], resources: [{uri: 'x://y', server: h}]}\n"
    )
    agent = config.agents["a"]
    assert agent.parallel_init is False
    assert [server.model_dump() for server in agent.mcp_servers] == [
        {
            "type": "stdio",
            "name": "srv",
            "command": "python",
            "args": ["srv.py", "--port", "1"],
            "env": {},
            "timeout": 60,
        },
        {"type": "streamable-http", "name": "h", "url": "http://h:1/mcp", "headers": {}, "timeout": 60},
    ]
    assert agent.knowledge.resources[0].server == "h"
    assert agent.history.max_messages == 40


# -- content --------------------------------------------------------------------------------------------------
async def test_knowledge_reaches_the_system_context_in_a_fixed_order(
    tmp_path: Path, short_dir: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("LLT_API_KEY", "sk-test-knowledge")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "b.md").write_text("Bravo notes.")
    (tmp_path / "notes" / "a.md").write_text("Alpha notes.")
    (tmp_path / "notes" / "skip.txt").write_text("Not matched.")
    (tmp_path / "readme.txt").write_text("The readme.")
    (tmp_path / "big.txt").write_text("0123456789" * 10)
    socket_dir = short_dir
    async with ScriptedLLM() as llm, DocServer(delay=0.05) as docs:
        config = load_config(
            write_config(
                tmp_path,
                f"""\
state_dir: state
agents:
  reader:
    model: openai/knowledge-model
    api_base: {llm.url}
    api_key_env: LLT_API_KEY
    system_prompt: Answer from your knowledge.
    knowledge:
      prompts: [Inline fact one.]
      paths: [notes/*.md, readme.txt]
      urls: ["{docs.url}/doc/web"]
  small:
    model: openai/small-model
    api_base: {llm.url}
    api_key_env: LLT_API_KEY
    knowledge:
      paths: [big.txt]
      max_bytes: 25
""",
            )
        )
        async with Supervisor(config, socket=socket_dir / "s.sock", log_level="WARNING") as supervisor:
            llm.script("ok", "ok")
            await supervisor.router.send("reader", "What do you know?")
            await supervisor.router.send("small", "And you?")
    reader, small = llm.requests
    system = reader["messages"][0]
    assert system["role"] == "system"
    assert system["content"] == (
        "Answer from your knowledge.\n\n"
        "Inline fact one.\n\n"
        "### notes/a.md\nAlpha notes.\n\n### notes/b.md\nBravo notes.\n\n"
        "### readme.txt\nThe readme.\n\n"
        f"### {docs.url}/doc/web\ndocument web"
    )
    assert reader["messages"][1:] == [{"role": "user", "content": "What do you know?"}]
    assert small["messages"][0]["content"] == "### big.txt\n0123456789012345678901234\n[… truncated at 25 bytes]"


# -- timing ---------------------------------------------------------------------------------------------------
async def test_sources_load_concurrently_and_parallel_init_false_serialises(
    tmp_path: Path, short_dir: Path
) -> None:
    socket_dir = short_dir
    events = Events()
    async with DocServer(delay=DELAY) as docs:
        urls = "\n".join(f'        - "{docs.url}/doc/{name}"' for name in ("one", "two", "three"))
        config = load_config(
            write_config(
                tmp_path,
                f"""\
state_dir: state
agents:
  together:
    model: openai/unused
    api_base: http://127.0.0.1:9/v1  # never called (and with an api_base no key is needed)
    knowledge:
      urls:
{urls.replace("/doc/", "/doc/p-")}
  one_by_one:
    model: openai/unused
    api_base: http://127.0.0.1:9/v1  # never called (and with an api_base no key is needed)
    parallel_init: false
    knowledge:
      urls:
{urls.replace("/doc/", "/doc/s-")}
""",
            )
        )
        async with Supervisor(config, socket=socket_dir / "s.sock", on_event=events, log_level="WARNING"):
            pass
    parallel, serial = events.init_time("together"), events.init_time("one_by_one")
    print(f"init of 3 URL sources of {DELAY} s each: parallel {parallel:.3f} s, serial {serial:.3f} s")
    assert DELAY <= parallel < 1.2
    assert serial >= 1.4
    # Serial: each component is ready before the next one starts.
    serial_states = [state for component, state in events.components("one_by_one") if component != "backend"]
    assert serial_states == ["starting", "ready"] * 3
    # Parallel: every source started before the first one was ready.
    together = [state for component, state in events.components("together") if component != "backend"]
    assert together[:3] == ["starting"] * 3


# -- failures -------------------------------------------------------------------------------------------------
FAILING = """\
agents:
  good:
    model: openai/good-model
    api_base: {llm}
    api_key_env: LLT_API_KEY
    knowledge:
      urls: ["{docs}/doc/fine"]
      paths: [present.txt]
  not_found:
    model: openai/unused
    api_base: http://127.0.0.1:9/v1  # never called (and with an api_base no key is needed)
    knowledge:
      urls: ["{docs}/nothing-here"]
  unreachable:
    model: openai/unused
    api_base: http://127.0.0.1:9/v1  # never called (and with an api_base no key is needed)
    knowledge:
      urls: ["http://127.0.0.1:{closed_port}/doc"]
      timeout: 2
  missing_file:
    model: openai/unused
    api_base: http://127.0.0.1:9/v1  # never called (and with an api_base no key is needed)
    knowledge:
      paths: [absent/*.md]
"""


@pytest.fixture
def doc_server() -> Iterator[DocServer]:
    with DocServer(delay=0.01) as server:
        yield server


def test_a_failing_source_fails_its_agent_naming_the_component(
    systems: Systems, doc_server: DocServer, tmp_path: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]  # nothing listens once the probe is closed
    with ScriptedLLM() as llm:
        system = systems.make(
            FAILING.format(llm=llm.url, docs=doc_server.url, closed_port=closed_port),
            env={"LLT_API_KEY": "sk-test", "XDG_STATE_HOME": str(tmp_path / "state")},
        )
        (system.config.parent / "present.txt").write_text("Present.")
        system.start(
            until=lambda status: (
                {a["name"]: a["state"] for a in status["agents"]}
                == {"good": "ready", "not_found": "failed", "unreachable": "failed", "missing_file": "failed"}
            )
        )
        errors = {agent["name"]: agent["error"] for agent in system.status()["agents"]}
        assert f"component 'knowledge:{doc_server.url}/nothing-here' failed" in errors["not_found"]
        assert "HTTP 404" in errors["not_found"]
        assert f"component 'knowledge:http://127.0.0.1:{closed_port}/doc' failed" in errors["unreachable"]
        assert "ClientConnectorError" in errors["unreachable"]
        assert (
            "component 'knowledge:absent/*.md' failed: FileNotFoundError: no file matches"
            in errors["missing_file"]
        )
        assert errors["good"] is None
        # The start-up progress names them too, and the good agent serves.
        log = system.log_text()
        assert "not_found            failed: component 'knowledge:" in log
        assert "missing_file         failed: component 'knowledge:absent/*.md'" in log
        llm.script("fine", model="good-model")
        done = system.cli("send", "good", "hello")
        assert done.returncode == 0, done.stderr
        assert done.stdout == "fine\n"
        assert "### present.txt\nPresent." in llm.requests[-1]["messages"][0]["content"]


async def test_a_url_slower_than_its_timeout_fails(tmp_path: Path, short_dir: Path) -> None:
    socket_dir = short_dir
    events = Events()
    async with DocServer(delay=1.5) as docs:
        config = load_config(
            write_config(
                tmp_path,
                f"""\
state_dir: state
agents:
  patient:
    model: openai/unused
    api_base: http://127.0.0.1:9/v1  # never called (and with an api_base no key is needed)
    knowledge: {{urls: ["{docs.url}/doc/slow"], timeout: 0.3}}
  other:
    model: openai/unused
    api_base: http://127.0.0.1:9/v1  # never called (and with an api_base no key is needed)
""",
            )
        )
        async with Supervisor(config, socket=socket_dir / "s.sock", on_event=events, log_level="WARNING") as sup:
            status = {agent["name"]: agent for agent in sup.status()["agents"]}
    assert status["other"]["state"] == "ready"
    assert status["patient"]["state"] == "failed"
    assert status["patient"]["error"] == (
        f"component 'knowledge:{docs.url}/doc/slow' failed: TimeoutError: "
        f"{docs.url}/doc/slow: no complete answer within 0.3 s"
    )
    assert ("knowledge:" + docs.url + "/doc/slow", "failed") in events.components("patient")
