"""`llmling.testing`: the scripted OpenAI-compatible server, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from llmling.testing import HANG, Reply, ScriptedLLM, SystemProcess, ToolCall, tagged_processes

USER = [{"role": "user", "content": "hello there"}]


async def post(session: aiohttp.ClientSession, llm: ScriptedLLM, **body: Any) -> tuple[int, Any]:
    async with session.post(f"{llm.url}/chat/completions", json=body) as response:
        if body.get("stream"):
            return response.status, await sse_events(response)
        return response.status, await response.json()


async def sse_events(response: aiohttp.ClientResponse) -> list[Any]:
    """The `data:` payloads of a server-sent event stream, `[DONE]` kept as a string."""
    assert response.headers["Content-Type"].startswith("text/event-stream")
    text = await response.text()
    events = []
    for block in text.split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: "), block
        payload = block[len("data: ") :]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


async def test_a_plain_reply_and_the_recorded_request() -> None:
    async with ScriptedLLM() as llm, aiohttp.ClientSession() as session:
        assert llm.url.startswith("http://127.0.0.1:")
        assert llm.url.endswith("/v1")
        llm.script("Hi!")
        status, reply = await post(session, llm, model="m1", messages=USER, temperature=0.5)
    assert status == 200
    assert reply["object"] == "chat.completion"
    assert reply["model"] == "m1"
    (choice,) = reply["choices"]
    assert choice["message"] == {"role": "assistant", "content": "Hi!"}
    assert choice["finish_reason"] == "stop"
    assert reply["usage"] == {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}
    assert llm.requests == [{"model": "m1", "messages": USER, "temperature": 0.5}]
    assert llm.received[0].headers["Content-Type"] == "application/json"


async def test_queues_per_model_then_any_model_then_the_default() -> None:
    async with ScriptedLLM(default=lambda body: f"default for {body['model']}") as llm:
        llm.script("a1", "a2", model="a")
        llm.script("any")
        async with aiohttp.ClientSession() as session:
            contents = []
            for model in ("a", "b", "a", "a", "b"):
                _, reply = await post(session, llm, model=model, messages=USER)
                contents.append(reply["choices"][0]["message"]["content"])
    assert contents == ["a1", "any", "a2", "default for a", "default for b"]
    assert [body["model"] for body in llm.requests] == ["a", "b", "a", "a", "b"]


async def test_the_default_default_echoes_the_last_user_message() -> None:
    async with ScriptedLLM() as llm, aiohttp.ClientSession() as session:
        messages = [*USER, {"role": "assistant", "content": "x"}, {"role": "user", "content": "again"}]
        _, reply = await post(session, llm, model="m", messages=messages)
    assert reply["choices"][0]["message"]["content"] == "echo: again"


async def test_streaming_chunks_usage_and_done() -> None:
    async with ScriptedLLM() as llm, aiohttp.ClientSession() as session:
        llm.script(Reply("one two three"))
        llm.script(Reply("no usage", chunks=("no", " usage")))
        status, events = await post(
            session, llm, model="m", messages=USER, stream=True, stream_options={"include_usage": True}
        )
        _, without_usage = await post(session, llm, model="m", messages=USER, stream=True)
    assert status == 200
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks if chunk["choices"])
    assert text == "one two three"
    assert len([c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]) == 3
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert without_usage[-1] == "[DONE]"
    assert all("usage" not in chunk for chunk in without_usage[:-1])
    pieces = [c["choices"][0]["delta"].get("content") for c in without_usage[:-1] if c["choices"]]
    assert [p for p in pieces if p] == ["no", " usage"]


async def test_tool_calls_plain_and_streamed() -> None:
    call = ToolCall("get_weather", {"city": "Oslo"}, id="call_w")
    async with ScriptedLLM() as llm, aiohttp.ClientSession() as session:
        llm.script(Reply(tool_calls=(call, ToolCall("now", '{"tz": "UTC"}'))), Reply(tool_calls=(call,)))
        _, plain = await post(session, llm, model="m", messages=USER, tools=[{"type": "function"}])
        _, streamed = await post(session, llm, model="m", messages=USER, stream=True)
    message = plain["choices"][0]["message"]
    assert plain["choices"][0]["finish_reason"] == "tool_calls"
    assert message["content"] is None
    first, second = message["tool_calls"]
    assert first == {
        "index": 0,
        "id": "call_w",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
    }
    assert second["function"] == {"name": "now", "arguments": '{"tz": "UTC"}'}
    assert second["id"].startswith("call_")
    assert llm.requests[0]["tools"] == [{"type": "function"}]
    deltas = [c["choices"][0]["delta"] for c in streamed[:-1] if c["choices"]]
    calls = [delta["tool_calls"][0] for delta in deltas if "tool_calls" in delta]
    assert calls[0]["id"] == "call_w"
    assert calls[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert "".join(part["function"]["arguments"] for part in calls) == '{"city": "Oslo"}'
    assert streamed[-2]["choices"][0]["finish_reason"] == "tool_calls"


async def test_an_error_status() -> None:
    async with ScriptedLLM() as llm, aiohttp.ClientSession() as session:
        llm.script(Reply("rate limited", status=429))
        status, reply = await post(session, llm, model="m", messages=USER)
    assert status == 429
    assert reply["error"]["message"] == "rate limited"


async def test_error_headers_a_slow_stream_and_a_hang_released_by_close() -> None:
    hang_arrived = asyncio.Event()

    def reply(body: dict[str, Any]) -> Reply:
        hang_arrived.set()
        return Reply(delay=HANG)

    llm = ScriptedLLM(default=reply)
    await llm.start()
    async with aiohttp.ClientSession() as session:
        llm.script(Reply("slow down", status=429, headers={"Retry-After": "2"}))
        async with session.post(f"{llm.url}/chat/completions", json={"model": "m", "messages": USER}) as response:
            assert response.status == 429 and response.headers["Retry-After"] == "2"
            assert (await response.json())["error"]["type"] == "rate_limit_error"
        llm.script(Reply("a b c", chunk_delay=0.2))
        status, events = await post(session, llm, model="m", messages=USER, stream=True)
        assert status == 200
        texts = [e["choices"][0]["delta"].get("content") for e in events[:-1] if e["choices"]]
        assert "".join(text or "" for text in texts) == "a b c"
        hanging = asyncio.ensure_future(post(session, llm, model="m", messages=USER))
        await hang_arrived.wait()
        await llm.close()  # does not wait for the held request: it ends it
        status, answer = await hanging
    assert status == 503 and "closing" in answer["error"]["message"]


async def test_a_delayed_reply_keeps_the_server_serving_others() -> None:
    slow_arrived = asyncio.Event()

    def reply(body: dict[str, Any]) -> Reply:
        if body["model"] == "slow":
            slow_arrived.set()
            return Reply("slow", delay=0.5)
        return Reply("fast")

    async with ScriptedLLM(default=reply) as llm, aiohttp.ClientSession() as session:
        slow = asyncio.ensure_future(post(session, llm, model="slow", messages=USER))
        await slow_arrived.wait()
        _, fast = await post(session, llm, model="fast", messages=USER)
        assert not slow.done()  # the fast reply came while the slow one was still delayed
        _, late = await slow
    assert fast["choices"][0]["message"]["content"] == "fast"
    assert late["choices"][0]["message"]["content"] == "slow"


async def test_a_body_that_is_not_a_json_object_is_a_400() -> None:
    async with ScriptedLLM() as llm, aiohttp.ClientSession() as session:
        for data in (b"{nope", b"[1, 2]"):
            async with session.post(f"{llm.url}/chat/completions", data=data) as response:
                assert response.status == 400
                assert "JSON object" in (await response.json())["error"]["message"]
    assert llm.requests == []


async def test_the_default_function_may_change_the_script() -> None:
    def default(body: dict[str, Any]) -> str:
        llm.script("scripted by the default")
        return "from the default"

    llm = ScriptedLLM(default=default)
    async with llm, aiohttp.ClientSession() as session:
        _, first = await post(session, llm, model="m", messages=USER)
        _, second = await post(session, llm, model="m", messages=USER)
    assert first["choices"][0]["message"]["content"] == "from the default"
    assert second["choices"][0]["message"]["content"] == "scripted by the default"


def test_on_a_thread_of_its_own() -> None:
    with ScriptedLLM() as llm:
        llm.script("from the thread")
        request = urllib.request.Request(
            f"{llm.url}/chat/completions",
            data=json.dumps({"model": "m", "messages": USER}).encode(),
            headers={"Content-Type": "application/json", "Authorization": "Bearer k"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            reply = json.loads(response.read())
        url = llm.url
        assert any(thread.name == "llmling-scripted-llm" for thread in threading.enumerate())
    assert reply["choices"][0]["message"]["content"] == "from the thread"
    assert llm.received[0].headers["Authorization"] == "Bearer k"
    assert not any(thread.name == "llmling-scripted-llm" for thread in threading.enumerate())
    try:
        urllib.request.urlopen(f"{url}/chat/completions", data=b"{}", timeout=2)
    except OSError:
        pass
    else:
        raise AssertionError("the server still answers after the with block")


def test_a_system_that_cannot_start_raises_with_its_log(tmp_path: Path, short_dir: Path) -> None:
    config = tmp_path / "bad.yml"
    config.write_text("agents: {}\n")
    system = SystemProcess(config, short_dir / "s.sock", tmp_path / "up.log")
    with pytest.raises(RuntimeError, match="exited with 2") as caught:
        system.start(timeout=30)
    assert "at least one agent is required" in str(caught.value)
    assert tagged_processes(system.tag) == []
