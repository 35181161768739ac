"""Logging: every loguru sink of llmling has `diagnose=False` and redacts secrets; library use is silent.

- `configure(level, agent)` sets up a process's logging (`llmling up`, each agent process): loguru's handlers
  are replaced by one stderr sink, or none when `level` is None.
- Every sink made here has `diagnose=False` (a traceback never shows local variables, which hold keys) and
  replaces the value of each registered secret with `***`, in the message and in the traceback text alike.
- Secrets are registered with `add_secrets`: the supervisor registers the values of the variables used as
  keys (`api_key_env`, provider keys), the webhook secrets and every variable whose name says it is one
  (`looks_secret`); an agent process does the same with its own environment.
- Library use (`Agent`, `AgentPool`) logs nothing unless asked: `llmling.enable_logging("INFO")`, or the
  environment variable `LLMLING_LOG_LEVEL=INFO` (read when `llmling.api` is imported). Agent processes of a
  pool then log at that level too.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TextIO

from loguru import logger

FORMAT = "{time:HH:mm:ss.SSS} {level: <7} [{extra[agent]}] {message}"
MASK = "***"
# Shorter values are not redacted: they would mask ordinary words and numbers everywhere.
MIN_SECRET_LENGTH = 6
# Names of variables whose values are treated as secrets.
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.IGNORECASE)
LEVEL_ENV = "LLMLING_LOG_LEVEL"

# Invariant: _secrets only grows (a value once seen as a secret stays masked); _pattern matches exactly its
# members, longest first, and is rebuilt under _lock when a new one is added.
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None
_lock = threading.Lock()
# The level library use asked for (enable_logging), None while it stays silent.
_library_level: str | None = None


def looks_secret(name: str) -> bool:
    """Whether a variable's name says it holds a secret (`OPENAI_API_KEY`, `GITHUB_TOKEN`, ...)."""
    return bool(_SECRET_NAME.search(name))


def add_secrets(values: Iterable[str | None]) -> None:
    """Mask these values in every log line from now on (values shorter than MIN_SECRET_LENGTH are not)."""
    global _pattern
    new = {value for value in values if value and len(value) >= MIN_SECRET_LENGTH} - _secrets
    if not new:
        return
    with _lock:
        _secrets.update(new)
        ordered = sorted(_secrets, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(value) for value in ordered))


def add_environment_secrets(environ: Mapping[str, str], names: Iterable[str] = ()) -> None:
    """Register the values of `names` and of every variable of `environ` whose name looks secret."""
    add_secrets(environ.get(name) for name in names)
    add_secrets(value for name, value in environ.items() if looks_secret(name))


def redact(text: str) -> str:
    """`text` with every registered secret replaced by `***`."""
    pattern = _pattern
    return pattern.sub(MASK, text) if pattern is not None else text


def _redact_record(record: Any) -> bool:
    """A loguru filter: redacts the message (the sink redacts the formatted line, traceback included)."""
    record["message"] = redact(record["message"])
    return True


class _RedactingSink:
    """Writes loguru's formatted lines (with their tracebacks) to a stream, secrets masked."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, message: str) -> None:
        self.stream.write(redact(str(message)))
        self.stream.flush()


def add_sink(
    stream: TextIO,
    level: str | int,
    only: Callable[[Any], bool] | None = None,
) -> int:
    """Add a redacting sink without `diagnose` to `stream`; `only(record)` selects the records it takes."""

    def keep(record: Any) -> bool:
        record["extra"].setdefault("agent", "llmling")
        return (only is None or only(record)) and _redact_record(record)

    return logger.add(_RedactingSink(stream), level=level, format=FORMAT, filter=keep, diagnose=False)


def configure(level: str | None, agent: str = "llmling", stream: TextIO | None = None) -> None:
    """This process's logging: one redacting stderr sink at `level`, or no output at all when None."""
    logger.remove()
    logger.configure(extra={"agent": agent})
    if level is not None:
        add_sink(stream or sys.stderr, level)


def _from_llmling(record: Any) -> bool:
    return str(record["name"] or "").startswith("llmling")


def enable_logging(level: str = "INFO", stream: TextIO | None = None) -> int:
    """Library use: show llmling's log lines (supervisor and agents) at `level` on `stream` (stderr).

    Adds one sink (redacting, without `diagnose`) that takes llmling's records only. loguru's default
    handler, if still installed, is removed: it would print the same lines again, with local variables.
    Returns the sink's id (`loguru.logger.remove(id)` removes it).
    """
    global _library_level
    _library_level = level
    with contextlib.suppress(ValueError):  # already removed by the application
        logger.remove(0)
    logger.enable("llmling")
    return add_sink(stream or sys.stderr, level, only=_from_llmling)


def library_level() -> str | None:
    """The level agents of a pool log at: the one `enable_logging` was given, None (silent) without it."""
    return _library_level


def enable_from_environment() -> None:
    """`LLMLING_LOG_LEVEL=LEVEL` turns on library logging (read when `llmling.api` is imported)."""
    level = os.environ.get(LEVEL_ENV)
    if level:
        enable_logging(level.upper())


__all__ = [
    "FORMAT",
    "LEVEL_ENV",
    "add_environment_secrets",
    "add_secrets",
    "add_sink",
    "configure",
    "enable_logging",
    "library_level",
    "looks_secret",
    "redact",
]
