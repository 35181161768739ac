"""Webhooks as GitHub, Stripe and Slack send them: signatures with timestamps, events and ping, replays, form
bodies, header templates; and every refused delivery counted and reported. Real `llmling up`, real HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from llmling.config.loader import parse_config
from llmling.errors import ConfigError
from llmling.ipc.peer import Peer, connect
from llmling.supervisor.triggers.webhook_replay import MemoryDeliveryIds
from tests._automation import RECORDER, free_port, got, wait_listening, wait_until

GH, STRIPE, SLACK, GEN = "gh-secret", "whsec_test_secret", "slack-signing-secret", "generic-secret"


def hex_hmac(secret: str, payload: bytes) -> str:
    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


def github_headers(body: bytes, event: str, delivery: str | None = None, secret: str = GH) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-Hub-Signature-256": "sha256=" + hex_hmac(secret, body),
    }
    if delivery:
        headers["X-GitHub-Delivery"] = delivery
    return headers


def stripe_headers(body: bytes, at: float, secret: str = STRIPE) -> dict[str, str]:
    stamp = str(int(at))
    signature = hex_hmac(secret, stamp.encode() + b"." + body)
    return {"Content-Type": "application/json", "Stripe-Signature": f"t={stamp},v1={'0' * 64},v1={signature}"}


def slack_headers(body: bytes, at: float, secret: str = SLACK) -> dict[str, str]:
    stamp = str(int(at))
    return {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": "v0=" + hex_hmac(secret, b"v0:" + stamp.encode() + b":" + body),
    }


@pytest.fixture(scope="module")
def system(module_systems):  # type: ignore[no-untyped-def]
    port = free_port()
    started = module_systems.start(
        f"""
        agents:
          hooks:
            callback: rec:record
            triggers:
              - type: webhook
                name: github
                port: {port}
                path: /github
                secret_env: GH_SECRET
                events: [push, pull_request]
                template: "{{event}} {{headers[x-github-event]}} {{headers[X-GITHUB-EVENT]}} {{data[ref]}}"
              - type: webhook
                name: stripe
                port: {port}
                path: /stripe
                secret_env: STRIPE_SECRET
                signature: stripe
                timestamp_tolerance_s: 60
                template: "stripe {{data[type]}}"
              - type: webhook
                name: slack
                port: {port}
                path: /slack
                secret_env: SLACK_SECRET
                signature: slack
                template: "{{data[command]}} {{data[text]}} from {{data[user_name]}}"
              - type: webhook
                name: generic
                port: {port}
                path: /generic
                secret_env: GEN_SECRET
                signature: hmac-sha256
                signature_header: X-Signature
              - {{type: webhook, name: plain, port: {port}, path: /plain, max_body_bytes: 100}}
              - {{type: webhook, name: closed, port: {port}, path: /off, enabled: false}}
        """,
        modules={"rec": RECORDER},
        env={"GH_SECRET": GH, "STRIPE_SECRET": STRIPE, "SLACK_SECRET": SLACK, "GEN_SECRET": GEN},
    )
    wait_listening(port)
    started.base = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    return started


def prompts(system) -> list[str]:  # type: ignore[no-untyped-def]
    return [call["prompt"] for call in got(system.config.parent)]


def counts(system) -> dict[str, dict[str, Any]]:  # type: ignore[no-untyped-def]
    return {item["name"]: item for item in system.request({"t": "triggers"})["triggers"]}


async def post(
    http: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, Any, dict[str, str]]:
    async with http.post(url, data=body, headers=headers or {}) as response:
        text = await response.text()
        return response.status, (json.loads(text) if text else None), dict(response.headers)


async def barrier(http: aiohttp.ClientSession, system, marker: str) -> None:  # type: ignore[no-untyped-def]
    """Return once every run started before has finished: the agent serves its runs in order."""
    status, reply, _ = await post(http, f"{system.base}/plain?wait=true", marker.encode())
    assert status == 200 and reply["content"] == f"got: {marker}"


async def test_github_ping_events_filter_and_header_templates(system) -> None:  # type: ignore[no-untyped-def]
    before = counts(system)["github"]
    async with aiohttp.ClientSession() as http:
        ping = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}).encode()
        status, reply, _ = await post(http, f"{system.base}/github", ping, github_headers(ping, "ping"))
        assert (status, reply["event"], reply["ok"]) == (200, "ping", True)
        # An unsigned ping is refused like any other request.
        status, _, _ = await post(http, f"{system.base}/github", ping, github_headers(ping, "ping", secret="x"))
        assert status == 401

        issue = json.dumps({"action": "opened"}).encode()
        status, reply, _ = await post(http, f"{system.base}/github", issue, github_headers(issue, "issues"))
        assert status == 204 and reply is None

        push = json.dumps({"ref": "refs/heads/main"}).encode()
        status, reply, _ = await post(http, f"{system.base}/github?wait=true", push, github_headers(push, "push"))
        assert status == 200
        # {event}, and the header by any case of its name.
        assert reply["content"] == "got: push push push refs/heads/main"
    after = counts(system)["github"]
    assert after["fired"] - before["fired"] == 1
    assert after["skipped"] - before["skipped"] == 1  # the `issues` event
    assert after["rejected"] - before["rejected"] == 1  # the unsigned ping
    assert not any("Keep it logically" in prompt or "opened" in prompt for prompt in prompts(system))


async def test_replayed_delivery_runs_once_and_gets_the_first_reply(system) -> None:  # type: ignore[no-untyped-def]
    delivery = f"d-{time.monotonic_ns()}"
    push = json.dumps({"ref": f"refs/heads/{delivery}"}).encode()
    async with aiohttp.ClientSession() as http:
        first = await post(http, f"{system.base}/github", push, github_headers(push, "push", delivery))
        assert first[0] == 202
        # Replayed three times, one of them concurrently with another: the same body, no run.
        again = [await post(http, f"{system.base}/github", push, github_headers(push, "push", delivery))]
        again += await asyncio.gather(
            *(post(http, f"{system.base}/github", push, github_headers(push, "push", delivery)) for _ in range(2))
        )
        for status, reply, headers in again:
            assert (status, reply) == (202, first[1])
            assert headers.get("X-Llmling-Replay") == "true"
        # A forged replay (the right id, a wrong signature) is refused before the id is looked at.
        forged = github_headers(push, "push", delivery, secret="wrong")
        assert (await post(http, f"{system.base}/github", push, forged))[0] == 401

        # Idempotency-Key on an unsigned trigger: the same.
        key = {"Idempotency-Key": f"k-{delivery}"}
        one = await post(http, f"{system.base}/plain", b"pay once", key)
        two = await post(http, f"{system.base}/plain", b"pay once", key)
        assert one[0] == two[0] == 202 and one[1] == two[1]
        await barrier(http, system, f"after {delivery}")
    runs = prompts(system)
    assert runs.count(f"push push push refs/heads/{delivery}") == 1
    assert runs.count("pay once") == 1


async def test_stripe_signature_and_tolerance(system) -> None:  # type: ignore[no-untyped-def]
    event = json.dumps({"id": "evt_1", "type": "invoice.paid"}).encode()
    url = f"{system.base}/stripe"
    async with aiohttp.ClientSession() as http:
        status, reply, _ = await post(http, f"{url}?wait=true", event, stripe_headers(event, time.time()))
        assert status == 200 and reply["content"] == "got: stripe invoice.paid"
        # Stale (older than the 60 s tolerance), from the future, wrong secret, no header: 401.
        stale = await post(http, url, event, stripe_headers(event, time.time() - 120))
        assert stale[0] == 401 and "old" in stale[1]["error"]
        future = await post(http, url, event, stripe_headers(event, time.time() + 120))
        assert future[0] == 401 and "future" in future[1]["error"]
        assert (await post(http, url, event, stripe_headers(event, time.time(), secret="whsec_other")))[0] == 401
        assert (await post(http, url, event, {"Content-Type": "application/json"}))[0] == 401
        # The same signed request again within the tolerance is a replay: the first reply, no run.
        headers = stripe_headers(b'{"type": "charge.failed"}', time.time())
        first = await post(http, url, b'{"type": "charge.failed"}', headers)
        second = await post(http, url, b'{"type": "charge.failed"}', headers)
        assert first[0] == second[0] == 202 and first[1] == second[1]
        await barrier(http, system, "after stripe")
    assert prompts(system).count("stripe charge.failed") == 1


async def test_slack_signature_tolerance_and_form_body(system) -> None:  # type: ignore[no-untyped-def]
    form = urlencode({"command": "/deploy", "text": "api to prod", "user_name": "ada", "token": "t"}).encode()
    url = f"{system.base}/slack"
    async with aiohttp.ClientSession() as http:
        status, reply, _ = await post(http, f"{url}?wait=true", form, slack_headers(form, time.time()))
        assert status == 200 and reply["content"] == "got: /deploy api to prod from ada"
        stale = await post(http, url, form, slack_headers(form, time.time() - 301))
        assert stale[0] == 401 and "X-Slack-Request-Timestamp" in stale[1]["error"]
        tampered = slack_headers(form, time.time())
        assert (await post(http, url, form + b"&extra=1", tampered))[0] == 401
        # A form without the fields the template names: 400, and no run.
        other = urlencode({"command": "/deploy"}).encode()
        bad = await post(http, url, other, slack_headers(other, time.time()))
        assert bad[0] == 400 and "template" in bad[1]["error"]


async def test_hmac_sha256_in_a_named_header(system) -> None:  # type: ignore[no-untyped-def]
    url = f"{system.base}/generic?wait=true"
    body = b"signed plainly"
    async with aiohttp.ClientSession() as http:
        for value in (hex_hmac(GEN, body), "sha256=" + hex_hmac(GEN, body).upper()):
            status, reply, _ = await post(http, url, body, {"x-signature": value})
            assert status == 200 and reply["content"] == "got: signed plainly"
        wrong = await post(http, url, body, {"X-Signature": hex_hmac("other", body)})
        assert wrong[0] == 401 and "X-Signature" in wrong[1]["error"]
        # GitHub's header does not stand in for the configured one.
        github = {"X-Hub-Signature-256": "sha256=" + hex_hmac(GEN, body)}
        assert (await post(http, url, body, github))[0] == 401


async def test_rejected_deliveries_are_counted_and_reported(system) -> None:  # type: ignore[no-untyped-def]
    before = counts(system)
    async with events(system) as seen, aiohttp.ClientSession() as http:
        expected = {
            404: await post(http, f"{system.base}/nowhere", b"x"),
            405: await http.get(f"{system.base}/plain"),
            503: await post(http, f"{system.base}/off", b"x"),
            415: await post(http, f"{system.base}/plain", b"x", {"Content-Encoding": "gzip"}),
            413: await post(http, f"{system.base}/plain", b"x" * 101),
            400: await post(http, f"{system.base}/plain", b"{", {"Content-Type": "application/json"}),
            401: await post(http, f"{system.base}/github", b"{}", github_headers(b"{}", "push", secret="no")),
        }
        for code, answer in expected.items():
            assert (answer[0] if isinstance(answer, tuple) else answer.status) == code
        wait_until(lambda: len([e for e in seen if e["event"] == "webhook_rejected"]) >= 7, what="7 events")
    rejected = [event for event in seen if event["event"] == "webhook_rejected"]
    by_code = {event["code"]: event for event in rejected}
    assert sorted(by_code) == sorted(expected)
    assert by_code[404]["trigger"] is None and by_code[404]["path"] == "/nowhere"
    assert (by_code[503]["agent"], by_code[503]["trigger"]) == ("hooks", "closed")
    assert "disabled" in by_code[503]["reason"] and "100 bytes" in by_code[413]["reason"]
    assert by_code[401]["trigger"] == "github" and "X-Hub-Signature-256" in by_code[401]["reason"]
    after = counts(system)
    assert after["plain"]["rejected"] - before["plain"]["rejected"] == 4  # 405 415 413 400
    assert after["closed"]["rejected"] - before["closed"]["rejected"] == 1
    assert after["github"]["rejected"] - before["github"]["rejected"] == 1
    listing = system.cli("trigger", "list")
    assert listing.returncode == 0 and "REJECTED" in listing.stdout.splitlines()[0]
    row = next(line.split() for line in listing.stdout.splitlines() if line.split()[1:2] == ["plain"])
    assert int(row[-1]) == after["plain"]["rejected"]
    watched = system.cli("trigger", "list", "--json")
    assert {item["name"]: item["rejected"] for item in json.loads(watched.stdout)}["closed"] >= 1


@asynccontextmanager
async def events(system) -> Iterator[list[dict[str, Any]]]:  # type: ignore[no-untyped-def, misc]
    """The supervisor's events from now on, as they come (a real subscription over the control socket)."""
    seen: list[dict[str, Any]] = []
    subscribed = asyncio.Event()

    def on_chunk(chunk: dict[str, Any]) -> None:
        event = chunk.get("event")
        if isinstance(event, dict):
            seen.append(event)
            subscribed.set()

    peer: Peer = await connect(system.socket, lambda _, message: None)
    peer.start_request({"t": "subscribe"}, on_chunk=on_chunk)
    await asyncio.wait_for(subscribed.wait(), 30)
    try:
        yield seen
    finally:
        peer.close()


# -- config and store -------------------------------------------------------------------------------------------
def test_webhook_config_errors_name_the_place() -> None:
    with pytest.raises(ConfigError, match=r"a\.yml:5: .*signature: stripe needs secret_env"):
        parse_config(
            "agents:\n  a:\n    callback: m:f\n    triggers:\n"
            "      - {type: webhook, name: s, port: 9000, signature: stripe}\n",
            "a.yml",
        )
    with pytest.raises(ConfigError, match=r"a\.yml:6: .*max_connections 5 differs from 9 set by trigger a/one"):
        parse_config(
            "agents:\n  a:\n    callback: m:f\n    triggers:\n"
            "      - {type: webhook, name: one, port: 9000, path: /1, max_connections: 9}\n"
            "      - {type: webhook, name: two, port: 9000, path: /2, max_connections: 5}\n",
            "a.yml",
        )
    with pytest.raises(ConfigError, match=r"signature_header is for signature: hmac-sha256"):
        parse_config(
            "agents:\n  a:\n    callback: m:f\n    triggers:\n"
            "      - {type: webhook, name: s, port: 9000, secret_env: S, signature_header: X-Sig}\n",
            "a.yml",
        )
    with pytest.raises(ConfigError, match=r"not an HTTP header name"):
        parse_config(
            "agents:\n  a:\n    callback: m:f\n    triggers:\n"
            "      - {type: webhook, name: one, port: 9000, replay_headers: ['bad header']}\n",
            "a.yml",
        )
    # One trigger sets a server key, the others leave it: fine.
    parse_config(
        "agents:\n  a:\n    callback: m:f\n    triggers:\n"
        "      - {type: webhook, name: one, port: 9000, path: /1, max_connections: 9}\n"
        "      - {type: webhook, name: two, port: 9000, path: /2}\n",
        "a.yml",
    )


def test_delivery_ids_are_bounded_by_count_and_window() -> None:
    now = [0.0]
    store = MemoryDeliveryIds(window=10.0, max_ids=3, clock=lambda: now[0])
    for index in range(5):
        store.put(f"d{index}", {"id": index})
        now[0] += 1
    assert len(store) == 3 and store.get("d0") is None and store.get("d4") == {"id": 4}
    now[0] = 13.5  # d2 was put at 2.0, d3 at 3.0, d4 at 4.0: d2 and d3 are older than the window
    assert store.get("d2") is None and store.get("d3") is None and store.get("d4") == {"id": 4}
    store.discard("d4")
    assert store.get("d4") is None and len(store) == 0
