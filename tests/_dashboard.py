"""A dashboard in a subprocess (`llmling dashboard` or `llmling up --dashboard`) and an HTTP client for it."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import threading
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from llmling.testing import llmling_command

URL_LINE = re.compile(r"dashboard: (http://\S+)")


class DashboardProcess:
    """Runs `command` (a list after `llmling`), collects its stderr, and finds the URL it prints."""

    def __init__(self, args: list[str], env: dict[str, str], prefix: list[str] | None = None) -> None:
        self.process = subprocess.Popen(
            [*(prefix or llmling_command()), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self._url = threading.Event()
        self.url = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            found = URL_LINE.search(line)
            if found and not self.url:
                self.url = found.group(1)
                self._url.set()
        self._url.set()

    def wait_url(self, timeout: float = 60.0) -> str:
        self._url.wait(timeout)
        assert self.url, f"no dashboard URL printed:\n{self.stderr}"
        return self.url

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    @property
    def base(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def token(self) -> str:
        query = urlsplit(self.url).query
        return query.removeprefix("token=")

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._reader.join(10)
        return self.process.returncode


def call(
    url: str,
    token: str | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> tuple[int, Any]:
    """(status, decoded JSON or text) of one request; a POST when `body` is given."""
    sent = {**(headers or {})}
    if token:
        sent["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        sent["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=sent, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode()
    with contextlib.suppress(ValueError):
        return status, json.loads(text)
    return status, text


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf-token" content="([^"]+)"', page)
    assert found, "the page carries no CSRF token"
    return found.group(1)


class LiveStream:
    """`/api/stream` read in a thread as a browser's EventSource does: each message's `id` and its data (a JSON
    list of feed entries)."""

    def __init__(self, base: str, token: str, last_event_id: int | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        self._response = urllib.request.urlopen(
            urllib.request.Request(base + "/api/stream", headers=headers), timeout=60
        )
        self.messages: list[tuple[int, list[dict[str, Any]]]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        event_id = None
        # Ends with the connection: closed by the server, or by close() (http.client then finds no file).
        with contextlib.suppress(OSError, ValueError, AttributeError):
            for raw in self._response:
                line = raw.decode().rstrip("\n")
                if line.startswith("id: "):
                    event_id = int(line[4:])
                elif line.startswith("data: "):
                    self.messages.append((event_id or 0, json.loads(line[6:])))

    @property
    def entries(self) -> list[dict[str, Any]]:
        return [entry for _, data in list(self.messages) for entry in data]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._response.close()
        self._reader.join(30)
