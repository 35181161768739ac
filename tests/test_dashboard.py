"""The dashboard over a real system: its JSON API, trace trees, /metrics, the token, CSRF and the bind rules."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmling.testing import TAG_ENV, SystemProcess, llmling_command, wait_gone
from tests._automation import free_port, wait_until
from tests._dashboard import DashboardProcess, LiveStream, call, csrf_of
from tests.conftest import Systems
from tests.test_cli_light import PROBE

SYSTEM = """
    agents:
      a: {callback: 'cb:echo', connections: [b]}
      b:
        callback: 'cb:upper'
        triggers:
          - {type: time, name: yearly, cron: "0 0 1 1 *", prompt: happy new year}
      c: {callback: 'cb:boom'}
"""


@pytest.fixture(scope="module")
def system(module_systems: Systems) -> SystemProcess:
    return module_systems.start(SYSTEM)


@pytest.fixture(scope="module")
def dashboard(system: SystemProcess) -> Iterator[DashboardProcess]:
    shown = DashboardProcess(["dashboard", "--socket", str(system.socket), "--port", "0"], system.env)
    shown.wait_url()

    def connected() -> bool:
        return bool(call(shown.base + "/api/overview", shown.token)[1]["system"]["connected"])

    wait_until(connected, 30, "the dashboard connected to the system")
    yield shown
    assert shown.stop() == 0, shown.stderr


def test_no_token_is_401_and_the_url_token_sets_a_cookie(dashboard: DashboardProcess) -> None:
    for path in ("/", "/api/overview", "/metrics", "/api/stream"):
        assert call(dashboard.base + path)[0] == 401, path
    assert call(dashboard.base + "/api/overview", token="wrong")[0] == 401
    assert call(dashboard.base + "/api/overview", token=dashboard.token)[0] == 200
    import urllib.request

    with urllib.request.urlopen(dashboard.url, timeout=30) as response:  # the printed URL, as a browser opens it
        cookie = response.headers["Set-Cookie"]
        assert response.headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    jar = cookie.split(";", 1)[0]
    assert call(dashboard.base + "/api/overview", headers={"Cookie": jar})[0] == 200
    assert dashboard.stderr.count(dashboard.token) == 1, "the token is printed once"


def test_agents_traces_and_metrics(system: SystemProcess, dashboard: DashboardProcess) -> None:
    done = system.cli("send", "a", "hello tree", "--wait", "--json")
    assert done.returncode == 0, done.stderr
    assert system.cli("send", "c", "fail me").returncode != 0
    token = dashboard.token

    def overview() -> dict[str, Any] | None:
        status, data = call(dashboard.base + "/api/overview", token)
        agents = {agent["name"]: agent for agent in data["agents"]}
        return agents if status == 200 and (agents.get("b") or {}).get("runs") else None

    agents = wait_until(overview, 30, "b's run in the overview")
    assert set(agents) == {"a", "b", "c"}
    assert all(agent["state"] == "ready" and agent["pid"] for agent in agents.values())
    assert agents["a"]["runs"] >= 1 and agents["a"]["p50"] is not None
    assert agents["c"]["failed"] >= 1

    def trace_of(prompt: str) -> dict[str, Any] | None:
        traces = call(dashboard.base + "/api/traces", token)[1]["traces"]
        return next((t for t in traces if t["prompt"] == prompt and t["runs"] == 2 and not t["running"]), None)

    summary = wait_until(lambda: trace_of("hello tree"), 30, "the trace of a >> b")
    status, tree = call(f"{dashboard.base}/api/traces/{summary['id']}", token)
    assert status == 200
    nodes = {node["agent"]: node for node in tree["nodes"]}
    assert nodes["b"]["parent_id"] == nodes["a"]["id"], "b is drawn under a"
    assert nodes["a"]["parent_id"] is None
    assert nodes["a"]["status"] == nodes["b"]["status"] == "ok"
    assert nodes["b"]["content"] == "ECHO: HELLO TREE"
    assert call(dashboard.base + "/api/traces/nope", token)[0] == 404

    failed = wait_until(lambda: trace_of("fail me") or _failed_trace(dashboard, token), 30, "c's failed trace")
    assert failed["failed"] == 1

    text = call(dashboard.base + "/metrics", token)[1]
    runs = {
        (s.labels["agent"], s.labels["outcome"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "llmling_runs_total"
    }
    assert runs[("b", "ok")] >= 1 and runs[("c", "error")] >= 1

    feed = call(dashboard.base + "/api/feed", token)[1]["events"]
    assert any(e["event"] == "run_finished" and e["agent"] == "b" for e in feed)

    found = call(dashboard.base + "/api/history?agent=b&q=hello%20TREE", token)[1]["runs"]
    assert [run["content"] for run in found] == ["ECHO: HELLO TREE"]


def test_the_live_stream_sends_lists_of_new_entries_and_goes_on_after_the_last_id(
    system: SystemProcess, dashboard: DashboardProcess
) -> None:
    """The live feed: each message is a list of new feed entries (in order, none twice), its `id` the last
    entry's seq; a reconnect with Last-Event-ID gets what came after that id first."""
    stream = LiveStream(dashboard.base, dashboard.token)
    try:
        prompts = [f"live {n}" for n in range(12)]
        for prompt in prompts:
            assert system.cli("send", "a", prompt, "--wait").returncode == 0

        def b_finished() -> list[dict[str, Any]] | None:
            done = [e for e in stream.entries if e["event"] == "run_finished" and e.get("agent") == "b"]
            return done if len(done) >= len(prompts) else None

        wait_until(b_finished, 60, "b's outcomes in the live stream")
        seqs = [entry["seq"] for entry in stream.entries]
        assert seqs == sorted(set(seqs)), "in order, none twice"
        for event_id, data in stream.messages:
            assert isinstance(data, list) and data and event_id == data[-1]["seq"]
        texts = {e.get("text") for e in stream.entries if e["event"] == "run_finished" and e.get("agent") == "b"}
        assert {f"ECHO: {prompt.upper()}" for prompt in prompts} <= texts
    finally:
        stream.close()
    middle = seqs[len(seqs) // 2]
    again = LiveStream(dashboard.base, dashboard.token, last_event_id=middle)
    try:
        wait_until(lambda: again.messages, 30, "the entries after the last id")
        assert again.messages[0][1][0]["seq"] == middle + 1
    finally:
        again.close()


def _failed_trace(dashboard: DashboardProcess, token: str) -> dict[str, Any] | None:
    traces = call(dashboard.base + "/api/traces", token)[1]["traces"]
    return next((t for t in traces if t["root"] == "c" and t["failed"]), None)


def test_actions_need_csrf(system: SystemProcess, dashboard: DashboardProcess) -> None:
    token = dashboard.token
    page = call(dashboard.base + "/", token)[1]
    csrf = csrf_of(page)
    toggle = {"agent": "b", "name": "yearly", "enabled": False}
    assert call(dashboard.base + "/api/triggers", token, toggle)[0] == 403
    assert call(dashboard.base + "/api/triggers", token, toggle, {"X-CSRF-Token": "forged"})[0] == 403
    foreign = {"X-CSRF-Token": csrf, "Origin": "http://evil.example"}
    assert call(dashboard.base + "/api/triggers", token, toggle, foreign)[0] == 403
    status, reply = call(dashboard.base + "/api/triggers", token, toggle, {"X-CSRF-Token": csrf})
    assert status == 200 and reply["trigger"]["enabled"] is False
    listed = system.request({"t": "triggers"})["triggers"]
    assert [t["enabled"] for t in listed if t["name"] == "yearly"] == [False]
    again = {**toggle, "enabled": True}
    assert call(dashboard.base + "/api/triggers", token, again, {"X-CSRF-Token": csrf})[0] == 200

    status, sent = call(
        dashboard.base + "/api/send", token, {"agent": "a", "prompt": "from the page"}, {"X-CSRF-Token": csrf}
    )
    assert status == 200 and sent["content"] == "echo: from the page"
    status, bad = call(dashboard.base + "/api/send", token, {"agent": "a"}, {"X-CSRF-Token": csrf})
    assert status == 400 and "prompt" in bad["error"]
    status, bad = call(dashboard.base + "/api/send", token, {"agent": "zz", "prompt": "x"}, {"X-CSRF-Token": csrf})
    assert status == 502 and "zz" in bad["error"]
    rebound = call(
        dashboard.base + "/api/overview",
        token,
        headers={"Host": f"evil.example:{dashboard.base.rsplit(':', 1)[1]}"},
    )
    assert rebound[0] == 403


def test_dead_letters_through_the_adapter(dashboard: DashboardProcess) -> None:
    status, letters = call(dashboard.base + "/api/dead_letters", dashboard.token)
    assert status == 200
    if letters["available"]:  # a supervisor with delivery's `dead_letters` request: c's failures are listed
        assert all(letter["agent"] == "c" for letter in letters["dead_letters"])
    else:  # without it, the view says so instead of failing
        assert "dead_letters" in letters["reason"]


def test_non_loopback_bind_without_token_refuses(system: SystemProcess) -> None:
    port = free_port()
    done = subprocess.run(
        [
            *llmling_command(),
            "dashboard",
            "--socket",
            str(system.socket),
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
            "--no-token",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=system.env,
    )
    assert done.returncode != 0
    assert "refusing to serve the dashboard on 0.0.0.0 without a token" in done.stderr
    assert "Traceback" not in done.stderr


def test_no_token_on_loopback_still_checks_csrf(system: SystemProcess) -> None:
    shown = DashboardProcess(
        ["dashboard", "--socket", str(system.socket), "--port", "0", "--no-token"], system.env
    )
    try:
        shown.wait_url()
        assert "token=" not in shown.url
        assert call(shown.base + "/api/overview")[0] == 200
        toggle = {"agent": "b", "name": "yearly", "enabled": True}
        assert call(shown.base + "/api/triggers", body=toggle)[0] == 403
    finally:
        assert shown.stop() == 0


def test_up_with_dashboard(systems: Systems) -> None:
    made = systems.make(SYSTEM)
    port = free_port()
    up = DashboardProcess(
        ["up", str(made.config), "--socket", str(made.socket), "--dashboard", f"127.0.0.1:{port}"],
        {**made.env, TAG_ENV: made.tag},
    )
    made.process = up.process  # the fixture's stop() ends it and checks nothing is left
    url = up.wait_url()
    assert url.startswith(f"http://127.0.0.1:{port}/?token=")
    agents = wait_until(
        lambda: call(up.base + "/api/overview", up.token)[1]["agents"] or None, 30, "the agents of the system"
    )
    assert {agent["name"] for agent in agents} == {"a", "b", "c"}
    assert up.stop() == 0, up.stderr


def test_dashboard_imports_no_litellm(system: SystemProcess) -> None:
    probe = DashboardProcess(
        ["dashboard", "--socket", str(system.socket), "--port", "0"],
        system.env,
        prefix=[sys.executable, "-c", PROBE],
    )
    probe.wait_url()
    probe.stop()
    loaded = next(line for line in probe.lines if line.startswith("LOADED"))
    for heavy in ("litellm", "pydantic", "mcp", "llmling.supervisor"):
        assert heavy not in loaded.split()[1].split(","), loaded


def test_up_dashboard_port_taken_fails_the_start(systems: Systems) -> None:
    made = systems.make(SYSTEM)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        up = DashboardProcess(
            ["up", str(made.config), "--socket", str(made.socket), "--dashboard", str(port)],
            {**made.env, TAG_ENV: made.tag},
        )
        made.process = up.process
        assert up.process.wait(60) == 1
    up.stop()
    assert f"dashboard on 127.0.0.1:{port} exited with status 1" in up.stderr
    assert f"cannot serve on 127.0.0.1:{port}" in up.stderr
    assert "Traceback" not in up.stderr


def test_up_dashboard_dies_with_a_killed_supervisor(systems: Systems) -> None:
    made = systems.make(SYSTEM)
    up = DashboardProcess(
        ["up", str(made.config), "--socket", str(made.socket), "--dashboard", "127.0.0.1:0"],
        {**made.env, TAG_ENV: made.tag},
    )
    made.process = up.process
    up.wait_url()
    assert len(made.processes()) >= 5  # up, forkserver, 3 agents, the dashboard (and the resource tracker)
    os.kill(up.process.pid, signal.SIGKILL)
    up.process.wait(30)
    assert wait_gone(made.tag, 30) == []


def test_agents_view_lists_each_process_with_its_host() -> None:
    """A status entry with `processes` (replicas, remote hosts) shows each process with its host; without it,
    the agent's pid as before."""
    from llmling.dashboard.state import DashboardState

    state = DashboardState()
    processes = [
        {"host": "web-1", "pid": 4101, "state": "ready", "replica": 0},
        {"host": "gpu-2", "pid": 77, "state": "starting"},
    ]
    agents = [{"name": "a", "state": "ready", "pid": 4101, "processes": processes}, {"name": "b", "pid": 12}]
    state.on_event({"event": "subscribed", "status": {"agents": agents, "totals": {}}})
    shown = {agent["name"]: agent for agent in state.agents()}
    assert shown["a"]["processes"] == [
        {"host": "web-1", "pid": 4101, "state": "ready"},
        {"host": "gpu-2", "pid": 77, "state": "starting"},
    ]
    assert shown["b"]["processes"] is None and shown["b"]["pid"] == 12
