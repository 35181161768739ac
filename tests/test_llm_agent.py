"""Functional: LLM agents talk through litellm to a scripted OpenAI-compatible server on 127.0.0.1.

One system (litellm is preloaded once in its forkserver) and one server serve the whole module; each test
uses its own agent and model name, so the script and the history of one test never meet another's.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from llmling.ipc.client import Client
from llmling.testing import Reply, ScriptedLLM, SystemProcess
from tests.conftest import Systems

API_KEY = "sk-test-0123456789"
SYSTEM_PROMPT = "You are a terse assistant."

CONFIG = """\
agents:
  chat:
    model: openai/chat-model
    api_base: {url}
    api_key_env: LLT_API_KEY
    system_prompt: {system_prompt}
    model_settings:
      temperature: 0.25
      max_tokens: 64
      seed: 7
  streamer:
    model: openai/stream-model
    api_base: {url}
    api_key_env: LLT_API_KEY
  memory:
    model: openai/memory-model
    api_base: {url}
    api_key_env: LLT_API_KEY
    system_prompt: Remember what you are told.
  fragile:
    model: openai/fragile-model
    api_base: {url}
    api_key_env: LLT_API_KEY
"""


@pytest.fixture(scope="module")
def system(module_systems: Systems, llm: ScriptedLLM) -> SystemProcess:
    config = CONFIG.format(url=llm.url, system_prompt=SYSTEM_PROMPT)
    return module_systems.start(config, env={"LLT_API_KEY": API_KEY})


def bodies_for(llm: ScriptedLLM, model: str, since: int = 0) -> list[dict[str, Any]]:
    """The bodies of the requests for `model`, from the `since`-th request received on."""
    return [body for body in llm.requests[since:] if body.get("model") == model]


def test_a_non_streamed_reply(system: SystemProcess, llm: ScriptedLLM) -> None:
    since = len(llm.received)
    llm.script("The capital of France is Paris.", model="chat-model")
    done = system.cli("send", "chat", "Capital of France?", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["agent"] == "chat"
    assert out["content"] == "The capital of France is Paris."
    (body,) = bodies_for(llm, "chat-model", since)
    assert body["messages"] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "Capital of France?"},
    ]
    assert not body.get("stream")
    # model_settings reach the request as they are.
    assert body["temperature"] == 0.25
    assert body["max_tokens"] == 64
    assert body["seed"] == 7
    received = next(item for item in llm.received if item.body is body)
    assert received.headers.get("Authorization") == f"Bearer {API_KEY}"


def test_a_streamed_reply_is_printed_as_it_comes(system: SystemProcess, llm: ScriptedLLM) -> None:
    since = len(llm.received)
    text = "Streaming works, word by word."
    llm.script(Reply(text, chunks=("Stream", "ing works,", " word by", " word.")), model="stream-model")
    done = system.cli("send", "streamer", "Stream something")
    assert done.returncode == 0, done.stderr
    assert done.stdout == text + "\n"
    (body,) = bodies_for(llm, "stream-model", since)
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "user", "content": "Stream something"}]


def test_chunks_cross_the_supervisor_one_by_one(system: SystemProcess, llm: ScriptedLLM) -> None:
    pieces = ("alpha ", "beta ", "gamma")
    llm.script(Reply("".join(pieces), chunks=pieces), model="stream-model")
    with Client(system.socket, timeout=60) as client:
        frames = list(client.stream({"t": "send", "agent": "streamer", "prompt": "go", "stream": True}))
    accepted, *chunks, result = frames
    assert accepted["accepted"] == {"id": result["id"], "trace_id": result["trace_id"]}
    assert [chunk["t"] for chunk in chunks] == ["chunk"] * len(pieces)
    assert tuple(chunk["text"] for chunk in chunks) == pieces
    assert result["t"] == "result"
    assert result["content"] == "alpha beta gamma"
    assert result["usage"]["completion_tokens"] == 3
    assert result["usage"]["total_tokens"] == result["usage"]["prompt_tokens"] + 3


def test_history_is_kept_between_sends(system: SystemProcess, llm: ScriptedLLM) -> None:
    since = len(llm.received)
    llm.script("Nice to meet you, Ada.", "Your name is Ada.", model="memory-model")
    first = system.cli("send", "memory", "My name is Ada.", "--json")
    assert json.loads(first.stdout)["content"] == "Nice to meet you, Ada."
    second = system.cli("send", "memory", "What is my name?")  # streamed this time
    assert second.stdout == "Your name is Ada.\n"
    _, body = bodies_for(llm, "memory-model", since)
    assert body["messages"] == [
        {"role": "system", "content": "Remember what you are told."},
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Nice to meet you, Ada."},
        {"role": "user", "content": "What is my name?"},
    ]


def test_a_model_error_fails_the_send_and_the_agent_goes_on(system: SystemProcess, llm: ScriptedLLM) -> None:
    since = len(llm.received)
    llm.script(Reply("quota exceeded for this test", status=400), "Recovered.", model="fragile-model")
    done = system.cli("send", "fragile", "first try", "--json")
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "agent 'fragile' failed" in lines[0]
    assert "quota exceeded for this test" in lines[0]
    again = system.cli("send", "fragile", "second try", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["content"] == "Recovered."
    # The failed exchange is not part of the conversation.
    assert bodies_for(llm, "fragile-model", since)[-1]["messages"] == [{"role": "user", "content": "second try"}]
    status = {agent["name"]: agent for agent in system.status()["agents"]}
    assert status["fragile"]["restarts"] == 0


def test_the_default_reply_answers_unscripted_requests(system: SystemProcess, llm: ScriptedLLM) -> None:
    done = system.cli("send", "chat", "nothing scripted", "--json")
    assert json.loads(done.stdout)["content"] == "echo: nothing scripted"
