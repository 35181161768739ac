"""Model errors through real agent processes and litellm: a closed port, a scripted OpenAI-compatible server that
answers 401/400/429/5xx or hangs. Each failure reaches the Python API as a typed `AgentRunError.cause` naming the
model and its api_base; timeouts hold; 429/5xx are retried; a missing key fails the start and `validate`."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from llmling import Agent, AgentPool, AgentRunError, StartupError
from llmling.config.providers import check_key, key_variable, required_key
from llmling.errors import (
    MissingAPIKey,
    ModelAuthError,
    ModelBadRequest,
    ModelError,
    ModelRateLimited,
    ModelServerError,
    ModelTimeout,
    ModelUnreachable,
)
from llmling.testing import HANG, Reply, ScriptedLLM, llmling_command, refused_url
from tests.conftest import Systems

MODEL = "openai/err-model"


async def failure(agent: Agent[Any], prompt: str = "hello") -> AgentRunError:
    with pytest.raises(AgentRunError) as error:
        await agent.run(prompt)
    return error.value


def assert_names_the_model(cause: ModelError, api_base: str) -> None:
    assert cause.model == MODEL and cause.api_base == api_base
    assert f"model {MODEL} at {api_base}" in str(cause)


# -- each failure, typed ---------------------------------------------------------------------------------------
async def test_a_closed_port_is_model_unreachable_at_once() -> None:
    with refused_url() as url:
        async with Agent(model=MODEL, api_base=url, model_settings={"num_retries": 3}) as agent:
            error = await failure(agent)
    cause = error.cause
    assert isinstance(cause, ModelUnreachable), repr(cause)
    assert_names_the_model(cause, url)
    assert "unreachable: Connection refused" in str(cause)
    assert cause.attempts == 1  # connection failures are not retried
    assert cause.elapsed >= 0 and f"after {cause.elapsed:.2f} s" in str(cause)
    assert error.kind == "error"
    assert str(error).startswith("agent 'agent' failed: model openai/err-model at ")


@pytest.mark.parametrize(
    ("status", "kind"),
    [(401, ModelAuthError), (403, ModelAuthError), (400, ModelBadRequest), (404, ModelBadRequest)],
)
async def test_a_refusal_is_typed_keeps_the_providers_message_and_is_not_retried(
    status: int, kind: type[ModelError]
) -> None:
    async with ScriptedLLM() as llm:
        llm.script(Reply(f"scripted refusal {status}", status=status))
        async with Agent(model=MODEL, api_base=llm.url) as agent:
            error = await failure(agent)
            assert len(llm.received) == 1
            # The agent goes on serving.
            assert (await agent.run("again")).content == "echo: again"
    cause = error.cause
    assert type(cause) is kind, repr(cause)
    assert_names_the_model(cause, llm.url)
    assert cause.status == status and cause.attempts == 1
    assert cause.message == f"scripted refusal {status}"
    assert f"scripted refusal {status}" in str(error)


async def test_429_twice_then_an_answer_succeeds_after_retry_after() -> None:
    async with ScriptedLLM() as llm:
        llm.script(
            Reply("slow down", status=429, headers={"Retry-After": "1"}),
            Reply("slow down", status=429),
            "made it",
        )
        async with Agent(model=MODEL, api_base=llm.url, model_settings={"num_retries": 2}) as agent:
            reply = await agent.run("hello")
    assert reply.content == "made it"
    first, second, third = (item.at for item in llm.received)
    assert second - first >= 1.0  # Retry-After: 1 was honoured
    assert third > second


async def test_429_every_time_gives_up_after_the_retries_and_says_how_many() -> None:
    async with ScriptedLLM() as llm:
        llm.script(*[Reply("quota", status=429, headers={"Retry-After": "0"})] * 3)
        async with Agent(model=MODEL, api_base=llm.url, model_settings={"num_retries": 2}) as agent:
            error = await failure(agent)
    cause = error.cause
    assert isinstance(cause, ModelRateLimited), repr(cause)
    assert_names_the_model(cause, llm.url)
    assert cause.attempts == 3 and len(llm.received) == 3
    assert cause.status == 429 and "quota" in str(cause)
    assert "after 3 attempts in" in str(cause)


async def test_a_retry_after_beyond_the_timeout_gives_up_at_once() -> None:
    async with ScriptedLLM() as llm:
        llm.script(Reply("come back later", status=429, headers={"Retry-After": "30"}))
        async with Agent(model=MODEL, api_base=llm.url, model_settings={"timeout": 5}) as agent:
            error = await failure(agent)
    cause = error.cause
    assert isinstance(cause, ModelRateLimited) and cause.attempts == 1
    assert "come back later (a retry in 30.0 s would pass the timeout)" in str(cause)
    assert cause.elapsed < 5  # did not sit out the deadline


async def test_5xx_is_retried_with_backoff_then_reported() -> None:
    async with ScriptedLLM() as llm:
        llm.script(Reply("overloaded", status=503), Reply("broken", status=500))
        async with Agent(model=MODEL, api_base=llm.url, model_settings={"num_retries": 1}) as agent:
            error = await failure(agent)
            assert (await agent.run("again")).content == "echo: again"
    cause = error.cause
    assert isinstance(cause, ModelServerError), repr(cause)
    assert cause.status == 500 and cause.attempts == 2
    first, second, _ = (item.at for item in llm.received)
    assert second - first >= 0.25  # the first backoff is 0.25-0.5 s


async def test_num_retries_zero_reports_the_first_answer() -> None:
    async with ScriptedLLM() as llm:
        llm.script(Reply("overloaded", status=503))
        async with Agent(model=MODEL, api_base=llm.url, model_settings={"num_retries": 0}) as agent:
            error = await failure(agent)
    assert isinstance(error.cause, ModelServerError) and error.cause.attempts == 1
    assert len(llm.received) == 1


# -- the deadline ----------------------------------------------------------------------------------------------
async def test_a_hanging_server_fails_at_the_timeout() -> None:
    async with ScriptedLLM() as llm:
        llm.script(Reply(delay=HANG))
        async with Agent(model=MODEL, api_base=llm.url, model_settings={"timeout": 2, "num_retries": 2}) as agent:
            started = time.monotonic()
            error = await failure(agent)
            waited = time.monotonic() - started
    cause = error.cause
    assert isinstance(cause, ModelTimeout), repr(cause)
    assert_names_the_model(cause, llm.url)
    assert waited >= 2.0
    assert 2.0 <= cause.elapsed < 3.0  # measured in the agent: one deadline, no hidden retries
    assert cause.attempts == 1 and "model_settings.timeout=2 s" in str(cause)


async def test_the_timeout_covers_the_whole_stream(tmp_path: Path) -> None:
    config = {"agents": {"streamer": {"model": MODEL, "model_settings": {"timeout": 2}}}}
    async with ScriptedLLM() as llm:
        config["agents"]["streamer"]["api_base"] = llm.url
        # The first chunk comes at once, then one every 1.5 s: each read is quick, the whole is not.
        llm.script(Reply("one two three four", chunk_delay=1.5))
        async with AgentPool(config) as pool:
            chunks: list[str] = []
            with pytest.raises(AgentRunError) as error:
                await pool.supervisor.router.send("streamer", "go", lambda chunk: chunks.append(chunk["text"]))
    cause = error.value.cause
    assert isinstance(cause, ModelTimeout), repr(cause)
    assert 2.0 <= cause.elapsed < 3.0
    assert chunks and "".join(chunks) != "one two three four"  # streamed in part, then cut at the deadline
    assert len(llm.received) == 1  # text already went out: not retried


# -- downstream, and across the CLI ----------------------------------------------------------------------------
async def test_a_downstream_model_error_stays_typed(tmp_path: Path) -> None:
    (tmp_path / "passing.py").write_text("def on(prompt):\n    return prompt\n")
    with refused_url() as url:
        config = tmp_path / "agents.yml"
        config.write_text(
            "agents:\n"
            "  first: {callback: 'passing:on', connections: [second]}\n"
            f"  second: {{model: {MODEL}, api_base: '{url}'}}\n"
        )
        async with AgentPool(config) as pool:
            with pytest.raises(AgentRunError) as error:
                await pool.get_agent("first").run("x", wait_for_connections=True)
    assert error.value.agent == "second"
    assert isinstance(error.value.cause, ModelUnreachable)
    assert error.value.cause.api_base == url


# -- missing keys ----------------------------------------------------------------------------------------------
async def test_a_missing_api_key_env_fails_the_start_naming_the_variable() -> None:
    with pytest.raises(StartupError) as error:
        async with Agent(model="openai/gpt-4o-mini", api_key_env="LLT_SURELY_UNSET_KEY"):
            pass
    assert "component 'backend' failed" in str(error.value)
    assert "LLT_SURELY_UNSET_KEY is not set (model openai/gpt-4o-mini)" in str(error.value)


def test_up_a_missing_key_fails_that_agent_only_and_send_prints_one_line(
    systems: Systems, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)

    def settled(status: dict[str, Any]) -> bool:
        states = {agent["name"]: agent for agent in status["agents"]}
        return states["remote"]["state"] == "ready" and "OPENAI_API_KEY" in (states["keyless"].get("error") or "")

    with refused_url() as url:
        config = (
            f"agents:\n  keyless: {{model: openai/gpt-4o-mini}}\n  remote: {{model: {MODEL}, api_base: '{url}'}}\n"
        )
        system = systems.start(config, until=settled)
        done = system.cli("send", "remote", "hi")
    keyless = next(agent for agent in system.status()["agents"] if agent["name"] == "keyless")
    assert (
        "component 'backend' failed: MissingAPIKey: OPENAI_API_KEY is not set (model openai/gpt-4o-mini)"
        in (keyless["error"])
    )
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert f"agent 'remote' failed: model {MODEL} at {url} unreachable: Connection refused" in line


def validate(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*llmling_command(), "validate", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def test_validate_names_every_missing_key(tmp_path: Path) -> None:
    config = tmp_path / "keys.yml"
    config.write_text(
        "agents:\n"
        "  gpt: {model: openai/gpt-4o-mini}\n"
        "  claude: {model: claude-3-5-haiku-latest}\n"
        "  own: {model: openai/mine, api_base: 'http://127.0.0.1:8000/v1'}\n"
        "  keyed: {model: openai/mine, api_base: 'http://127.0.0.1:8000/v1', api_key_env: LLT_OWN_KEY}\n"
        "  embedded: {model: local/smollm2}\n"
    )
    keys = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "LLT_OWN_KEY")
    bare = {name: value for name, value in os.environ.items() if name not in keys}
    done = validate(config, bare)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"error: {config}: agents.gpt.model: OPENAI_API_KEY is not set (model openai/gpt-4o-mini)",
        f"error: {config}: agents.claude.model: ANTHROPIC_API_KEY is not set (model claude-3-5-haiku-latest)",
        f"error: {config}: agents.keyed.model: LLT_OWN_KEY is not set (model openai/mine)",
    ]
    done = validate(config, {**bare, **dict.fromkeys(keys, "sk-x")})
    assert done.returncode == 0, done.stderr
    assert "ok" in done.stdout


def test_the_key_rules() -> None:
    assert key_variable("openai/gpt-4o-mini") == "OPENAI_API_KEY"
    assert key_variable("gpt-4o") == "OPENAI_API_KEY"
    assert key_variable("anthropic/claude-3-5-haiku-latest") == "ANTHROPIC_API_KEY"
    assert key_variable("openai/x", api_key_env="MINE") == "MINE"
    assert key_variable("bedrock/anthropic.claude-v2") is None
    assert required_key("openai/x", api_base="http://127.0.0.1:1/v1") is None
    assert required_key("openai/x", api_base="http://127.0.0.1:1/v1", api_key_env="MINE") == "MINE"
    assert required_key("local/smollm2") is None
    check_key("openai/x", environ={"OPENAI_API_KEY": "sk"})
    with pytest.raises(MissingAPIKey, match=r"^OPENAI_API_KEY is not set \(model openai/x\)$"):
        check_key("openai/x", environ={"OPENAI_API_KEY": ""})


def test_a_cause_survives_its_frame() -> None:
    cause = ModelRateLimited("quota", model=MODEL, api_base=None, status=429, attempts=3, elapsed=1.5)
    frame = json.loads(json.dumps(cause.to_cause()))
    again = ModelError.from_cause(frame)
    assert type(again) is ModelRateLimited and str(again) == str(cause)
    assert str(cause) == f"model {MODEL} rate limited (HTTP 429): quota (after 3 attempts in 1.50 s)"
    error = AgentRunError.from_reply("a", {"t": "error", "error": "x", "kind": "error", "cause": frame})
    assert isinstance(error.cause, ModelRateLimited)
    plain = AgentRunError.from_reply("a", {"t": "error", "error": "ValueError: boom"})
    assert plain.cause == "ValueError: boom" and plain.kind == "error"
