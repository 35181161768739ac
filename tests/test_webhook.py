"""Webhook triggers: real HTTP requests (aiohttp client) against the supervisor's servers."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json

import aiohttp

from tests._automation import RECORDER, free_port, got, wait_listening, wait_until

SECRET = "s3cret-for-tests"


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def started(status: dict) -> bool:
    """Every agent has an outcome: `broken` fails its start on purpose."""
    states = {agent["name"]: agent["state"] for agent in status["agents"]}
    return states.get("broken") == "failed" and states.get("api_handler") == states.get("failing") == "ready"


def make_system(systems):  # type: ignore[no-untyped-def]
    port, other = free_port(), free_port()
    system = systems.start(
        f"""
        agents:
          api_handler:
            callback: rec:record
            triggers:
              - {{type: webhook, name: api_endpoint, port: {port}, path: /webhook, secret_env: WEBHOOK_SECRET}}
              - {{type: webhook, name: plain, port: {port}, path: /plain, max_body_bytes: 1000}}
              - type: webhook
                name: templated
                port: {port}
                path: /gh
                template: "{{data[action]}} on {{data[repo][name]}} via {{name}} (wait={{query[wait]}})"
              - {{type: webhook, name: sleepy, port: {port}, path: /off, enabled: false}}
          failing:
            callback: rec:boom
            triggers:
              - {{type: webhook, name: fails, port: {port}, path: /fails}}
          broken:
            callback: rec:no_such_function
            triggers:
              - {{type: webhook, name: dead, port: {other}, path: /dead}}
        """,
        modules={"rec": RECORDER},
        env={"WEBHOOK_SECRET": SECRET},
        until=started,
    )
    wait_listening(port)
    wait_listening(other)
    return system, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{other}"


async def test_webhook_requests(systems) -> None:  # type: ignore[no-untyped-def]
    system, base, other = make_system(systems)
    folder = system.config.parent
    async with aiohttp.ClientSession() as http:
        # Accepted at once: the ids are known before the run ends.
        async with http.post(f"{base}/plain", data=b"hello from a hook") as response:
            assert response.status == 202
            accepted = await response.json()
        assert accepted["agent"] == "api_handler" and accepted["trigger"] == "plain"
        assert accepted["id"] and len(accepted["trace_id"]) == 32
        wait_until(lambda: any(c["prompt"] == "hello from a hook" for c in got(folder)), what="the run")

        # ?wait=true: the agent's reply.
        async with http.post(f"{base}/plain?wait=true", data=b"and wait") as response:
            assert response.status == 200
            reply = await response.json()
        assert reply["content"] == "got: and wait" and reply["trace_id"] and reply["id"]

        # HMAC: good, wrong, missing.
        body = json.dumps({"event": "push"}).encode()
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(body)}
        async with http.post(f"{base}/webhook?wait=1", data=body, headers=headers) as response:
            assert response.status == 200
            assert (await response.json())["content"] == f"got: {body.decode()}"
        bad = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(body, "wrong")}
        async with http.post(f"{base}/webhook", data=body, headers=bad) as response:
            assert response.status == 401
            assert "X-Hub-Signature-256" in (await response.json())["error"]
        async with http.post(f"{base}/webhook", data=body) as response:
            assert response.status == 401

        # Too large: with a Content-Length, and streamed without one.
        async with http.post(f"{base}/plain", data=b"x" * 1001) as response:
            assert response.status == 413

        async def chunks():  # type: ignore[no-untyped-def]
            for _ in range(5):
                yield b"y" * 400

        async with http.post(f"{base}/plain", data=chunks()) as response:
            assert response.status == 413

        # Bad JSON with a JSON content type; the same text as text/plain is fine.
        async with http.post(
            f"{base}/plain", data=b"{not json", headers={"Content-Type": "application/json"}
        ) as response:
            assert response.status == 400
            assert "not valid JSON" in (await response.json())["error"]
        text = {"Content-Type": "text/plain"}
        async with http.post(f"{base}/plain", data=b"{not json", headers=text) as response:
            assert response.status == 202

        # Unknown path, wrong method.
        async with http.post(f"{base}/nope", data=b"x") as response:
            assert response.status == 404
        async with http.get(f"{base}/plain") as response:
            assert response.status == 405

        # Disabled trigger → 503, until enabled live.
        async with http.post(f"{base}/off", data=b"x") as response:
            assert response.status == 503
            assert "disabled" in (await response.json())["error"]
        result = system.cli("trigger", "enable", "api_handler", "sleepy")
        assert result.returncode == 0, result.stderr
        async with http.post(f"{base}/off?wait=true", data=b"now on") as response:
            assert response.status == 200

        # An agent that failed to start → 503; a run that fails → 502 with the error.
        async with http.post(f"{other}/dead", data=b"x") as response:
            assert response.status == 503
            assert "broken" in (await response.json())["error"]
        async with http.post(f"{base}/fails?wait=true", data=b"x") as response:
            assert response.status == 502
            failure = await response.json()
        assert "boom" in failure["error"] and failure["id"]

        # A template over the JSON body; a body the template does not fit → 400.
        payload = json.dumps({"action": "opened", "repo": {"name": "llmling"}})
        async with http.post(
            f"{base}/gh?wait=true", data=payload, headers={"Content-Type": "application/json"}
        ) as response:
            assert response.status == 200
            assert (await response.json())["content"] == "got: opened on llmling via templated (wait=true)"
        async with http.post(
            f"{base}/gh?wait=true", data=json.dumps({"other": 1}), headers={"Content-Type": "application/json"}
        ) as response:
            assert response.status == 400
            assert "template" in (await response.json())["error"]

    triggers = {item["name"]: item for item in system.request({"t": "triggers"})["triggers"]}
    assert triggers["plain"]["fired"] == 3
    assert triggers["fails"]["failed"] == 1 and "boom" in triggers["fails"]["last_error"]


async def test_bad_requests_do_not_disturb_good_ones(systems) -> None:  # type: ignore[no-untyped-def]
    system, base, _ = make_system(systems)
    async with aiohttp.ClientSession() as http:

        async def good(index: int) -> int:
            async with http.post(f"{base}/plain?wait=true", data=f"good {index}".encode()) as response:
                assert (await response.json())["content"] == f"got: good {index}"
                return response.status

        async def bad(index: int) -> int:
            kinds = [
                (f"{base}/plain", b"z" * 5000, {}),
                (f"{base}/webhook", b"{}", {"X-Hub-Signature-256": "sha256=00"}),
                (f"{base}/plain", b"{", {"Content-Type": "application/json"}),
                (f"{base}/missing", b"x", {}),
            ]
            url, body, headers = kinds[index % len(kinds)]
            async with http.post(url, data=body, headers=headers) as response:
                return response.status

        statuses = await asyncio.gather(*(good(i) for i in range(10)), *(bad(i) for i in range(40)))
    assert statuses[:10] == [200] * 10
    assert sorted(set(statuses[10:])) == [400, 401, 404, 413]
    assert system.status()["agents"][0]["state"] == "ready"
